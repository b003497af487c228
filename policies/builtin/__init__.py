"""Built-in policies that need no model (:mod:`.policy`), declared in :mod:`.family`."""

from evalharness.policies.builtin.policy import (
    BuiltinOptions,
    RandomPolicy,
    ZeroPolicy,
    make_random,
    make_zero,
)

__all__ = ["BuiltinOptions", "RandomPolicy", "ZeroPolicy", "make_random", "make_zero"]
