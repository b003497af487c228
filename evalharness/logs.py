"""evalharness's messages go through `logging`, under the ``evalharness`` logger.

The command line sets it up once (`configure`): warnings and errors as ``warning: ...`` and
``error: ...`` lines on stderr, progress and notes as plain lines; ``-q`` keeps only
warnings and errors, ``-v`` adds debug detail. A program that configures logging itself
(a training loop, a cluster's log collector) gets the same records through its own handlers;
the Python API adds this handler only where nothing is configured (`ensure_handler`), so a
batch job's log still shows progress.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER", "StderrHandler", "configure", "ensure_handler", "level_for"]

LOGGER = "evalharness"

_PREFIX = {logging.DEBUG: "debug: ", logging.WARNING: "warning: ", logging.ERROR: "error: "}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return _PREFIX.get(record.levelno, "") + text


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (so a redirected or
    captured stderr gets them), one line each, flushed at once."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def level_for(verbose: int = 0, quiet: int = 0) -> int:
    """``-q`` → WARNING, nothing → INFO, ``-v`` → DEBUG."""
    if quiet > verbose:
        return logging.WARNING
    if verbose > quiet:
        return logging.DEBUG
    return logging.INFO


def configure(level: int = logging.INFO) -> logging.Logger:
    """Send the ``evalharness`` logger's records at ``level`` and above to stderr, replacing a
    handler an earlier call installed."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if isinstance(handler, StderrHandler):
            logger.removeHandler(handler)
    logger.addHandler(StderrHandler())
    logger.setLevel(level)
    return logger


def ensure_handler() -> None:
    """`configure` at INFO unless the ``evalharness`` logger or the root logger already has a
    handler (then the program's own logging decides)."""
    if not logging.getLogger(LOGGER).handlers and not logging.getLogger().handlers:
        configure(logging.INFO)
