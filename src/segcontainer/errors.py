"""Errors whose message a user can act on, as opposed to internal failures."""


class UserError(Exception):
    """A problem with the user's input (hyperparameters, data, model channel, files).

    Its message is written as-is at the top of ``output/failure`` (SageMaker's FailureReason),
    so it must name what is wrong and how to fix it.
    """


class TrainingStopped(Exception):
    """Raised when SIGTERM asked the job to stop; inside an epoch it carries the progress
    (batches done, their summed loss) so a checkpoint can continue from there."""

    def __init__(self, message: str, iteration: int | None = None, loss_sum: float = 0.0):
        super().__init__(message)
        self.iteration = iteration
        self.loss_sum = loss_sum
