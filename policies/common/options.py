"""Parsing the ``?key=value`` options of a ``family:PATH?options`` spec.

Policy factories and finetune trainers share these so that every family accepts the same
spellings and its errors read the same: ``<owner>: option key='value' must be ...``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from evalharness.errors import EvalharnessError

__all__ = ["OptionError", "check_options", "option_bool", "option_device", "option_int"]


class OptionError(EvalharnessError, ValueError):
    """A ``?key=value`` option that is unknown or does not parse (the default error below)."""


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def check_options(
    options: Mapping[str, str],
    known: Iterable[str],
    owner: str,
    error: type[ValueError] = OptionError,
) -> None:
    """Refuse options ``owner`` does not know, listing the ones it does."""
    known = tuple(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise error(f"{owner} has no option(s) {unknown}; known: {', '.join(known)}")


def option_bool(
    options: Mapping[str, str],
    key: str,
    default: bool,
    owner: str,
    error: type[ValueError] = OptionError,
) -> bool:
    """A true/false option (1/0, true/false, yes/no, on/off), or ``default`` when absent.

    ``owner`` names who reads it (``policy 'diffusion'``); ``error`` is raised otherwise.
    """
    if key not in options:
        return default
    text = str(options[key]).strip().lower()
    if text not in _TRUE + _FALSE:
        raise error(f"{owner}: option {key}={options[key]!r} must be true or false")
    return text in _TRUE


def option_int(
    options: Mapping[str, str],
    key: str,
    default: int,
    owner: str,
    *,
    minimum: int | None = None,
    error: type[ValueError] = OptionError,
) -> int:
    """An integer option (at least ``minimum`` when given), or ``default`` when absent."""
    if key not in options:
        return default
    try:
        value = int(options[key])
    except ValueError:
        raise error(f"{owner}: option {key}={options[key]!r} must be an integer") from None
    if minimum is not None and value < minimum:
        raise error(f"{owner}: option {key}={value} must be >= {minimum}")
    return value


def option_device(
    options: Mapping[str, str], owner: str, error: type[ValueError] = OptionError
) -> str:
    """The torch ``device`` option (``cpu`` default, ``cuda``, ``cuda:1``), checked before any
    weight is built so that a typo or a missing GPU is named instead of failing inside torch."""
    import torch  # here, so that option parsing alone never imports torch

    text = str(options.get("device", "cpu"))
    try:
        device = torch.device(text)
    except RuntimeError:
        raise error(f"{owner}: option device={text!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(
            f"{owner}: option device={text!r}: torch sees no CUDA device here "
            f"(torch {torch.__version__}); use device=cpu"
        )
    return text
