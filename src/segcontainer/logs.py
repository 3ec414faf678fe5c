"""The container's log format, one for train, serve and the tools (bottom layer)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOG_FORMAT = "[%(asctime)s %(levelname)s] %(message)s"


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Log records of ``level`` and above to ``stream`` (default: standard output, which
    SageMaker sends to CloudWatch) in LOG_FORMAT. The root's handlers are replaced, not added
    to: a library that logged before this (which installs a default handler) would otherwise
    print every line twice."""
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
