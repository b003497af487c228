"""The Python API: one call that evaluates a policy and returns its tables.

See docs/python-api.md for a notebook-style walk-through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote

__all__ = ["parse_option_items", "policy_with_options"]

# Characters left as they are in an option value, so that recorded policy strings stay readable
# (paths, devices like cuda:0, lists like 0,1); everything else is %-encoded, which the policy
# string parser decodes again.
_SAFE = "/:,.-_~@"


def parse_option_items(items: Iterable[str], flag: str = "--option") -> dict[str, str]:
    """``["device=cuda", "ema=false"]`` -> ``{"device": "cuda", "ema": "false"}``.

    A later item overrides an earlier one with the same key; an item without ``=`` or with an
    empty key is an error naming the flag and the item.
    """
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {item!r} must be KEY=VALUE, e.g. {flag} device=cuda")
        options[key.strip()] = value.strip()
    return options


def policy_with_options(policy: str, options: Mapping[str, str]) -> str:
    """The policy string with ``options`` merged into its ``?key=value`` part.

    Options given here override those already in the string, as ``finetune --option`` does.
    Without options the string is returned unchanged, so what a run records stays what the
    user typed.

    >>> policy_with_options("octo_jax:/ckpt?stats=bridge", {"device": "cuda:0"})
    'octo_jax:/ckpt?stats=bridge&device=cuda:0'
    """
    if not options:
        return policy
    from evalharness.policies.registry import parse_policy_string

    ref = parse_policy_string(policy)
    merged = {**ref.options, **{str(k): str(v) for k, v in options.items()}}
    head = ref.name if ref.path is None else f"{ref.name}:{ref.path}"
    query = "&".join(f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in merged.items())
    return f"{head}?{query}"
