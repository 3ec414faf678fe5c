"""The container's log format, one for train, serve and the tools (bottom layer)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOG_FORMAT = "[%(asctime)s %(levelname)s] %(message)s"


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Log records of ``level`` and above to ``stream`` (default: standard output, which
    SageMaker sends to CloudWatch) in LOG_FORMAT. Plain stream handlers already on the root
    are replaced, not added to: a library that logged first (which installs one) or an
    earlier call would otherwise print every line twice. Other kinds of handler (a file, a
    test's capture) stay."""
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    kept = [h for h in root.handlers if type(h) is not logging.StreamHandler]
    root.handlers[:] = [*kept, handler]
    root.setLevel(level)
