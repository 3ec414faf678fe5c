"""Errors whose message a user can act on, as opposed to internal failures."""


class UserError(Exception):
    """A problem with the user's input (hyperparameters, data, model channel, files).

    Its message is written as-is at the top of ``output/failure`` (SageMaker's FailureReason),
    so it must name what is wrong and how to fix it.
    """


class TrainingStopped(Exception):
    """Raised inside the training loop when SIGTERM asked the job to stop."""
