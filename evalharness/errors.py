"""The one base class of every error a user can cause and fix.

`evalharness` prints an `EvalharnessError` as one line (`error: <message>`) and exits with
status 2: the message names the file, key, shape or value and what was expected. Any other
exception is a bug (in evalharness or in a policy adapter) and prints its traceback, exit 1.

Every layer subclasses `EvalharnessError` for its own errors and keeps the builtin base its
callers already catch, e.g. `class CheckpointError(EvalharnessError, ValueError)`. This module
imports nothing, so `envs`, `policies` and `evalharness` may all import it.

    >>> try:
    ...     raise UsageError("--num-envs must be >= 1, got 0")
    ... except ValueError as exc:
    ...     isinstance(exc, EvalharnessError)
    True
"""

__all__ = ["EvalharnessError", "RunError", "UsageError"]


class EvalharnessError(Exception):
    """An error the user can fix (bad input, a missing or foreign file, a run that cannot go
    on); its message says what to change. Never raised for bugs."""


class UsageError(EvalharnessError, ValueError):
    """A value given on the command line or to the Python API that is malformed or out of
    range (`--tasks a-b`, `--num-envs 0`)."""


class RunError(EvalharnessError, RuntimeError):
    """A run that cannot start or cannot go on; the message says what to change."""
