"""Errors whose message a user can act on, as opposed to internal failures."""


class UserError(Exception):
    """A problem with the user's input (hyperparameters, data, model channel, files).

    Its message is written as-is at the top of ``output/failure`` (SageMaker's FailureReason),
    so it must name what is wrong and how to fix it.
    """

    def __init__(self, *args: object):
        # A DataLoader worker's exception reaches the training process as its type called
        # with "Caught UserError in DataLoader worker process N.\nOriginal Traceback ...":
        # keep only the message the worker wrote, so the failure reason is that message.
        if args and isinstance(args[0], str) and "\nOriginal Traceback" in args[0]:
            marker = f"{type(self).__qualname__}: "
            start = args[0].rfind(marker)
            if args[0].startswith("Caught ") and start >= 0:
                args = (args[0][start + len(marker) :].rstrip(), *args[1:])
        super().__init__(*args)


class TrainingStopped(Exception):
    """Raised when SIGTERM asked the job to stop; inside an epoch it carries the progress
    (batches done, their summed loss) so a checkpoint can continue from there."""

    def __init__(self, message: str, iteration: int | None = None, loss_sum: float = 0.0):
        super().__init__(message)
        self.iteration = iteration
        self.loss_sum = loss_sum


class RequestError(Exception):
    """A bad /invocations request: ``status`` is the HTTP status to answer with, the message
    what the client should change."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
