"""evalharness: a simulation evaluation harness for generalist robot policies.

    import evalharness

    result = evalharness.evaluate("NAME[:CHECKPOINT]", "libero_spatial", tasks=[0])
    result.summary                     # per task and suite, with 95% Wilson intervals
    tuned = evalharness.finetune("FAMILY:ckpts/pretrained", "demos/", "ckpts/ft", steps=500)
    evalharness.evaluate(tuned.policy, "libero_spatial")

`evaluate`, `finetune` and `EvalResult` come from `evalharness.api` and are imported on first
use, so ``import evalharness`` stays light (no pandas, MuJoCo, JAX or torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["EvalResult", "__version__", "evaluate", "finetune"]

if TYPE_CHECKING:
    from evalharness.api import EvalResult, evaluate, finetune

_LAZY = {"EvalResult": "evalharness.api", "evaluate": "evalharness.api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "finetune":
        # The submodule evalharness.finetune is callable as `evalharness.api.finetune` (an
        # imported submodule replaces a package attribute of its name, so the module itself
        # must be the callable).
        return importlib.import_module("evalharness.finetune")
    raise AttributeError(f"module 'evalharness' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "finetune"])
