"""Which wire key carries which standard observation, per protocol, and the image preparation
each peer's client does before sending.

A key map sends the standard keys of one env's newest observation under the names a server
expects. A wire name may nest with ``.`` (vla-eval groups its cameras under ``images``); an
empty name leaves that observation out. Defaults, read from the peers' LIBERO clients:

- openpi (Physical-Intelligence/openpi ``examples/libero/main.py``): ``observation/image``,
  ``observation/wrist_image`` (both upright, i.e. LIBERO's frames rotated 180°, and
  ``resize_with_pad`` to 224×224), ``observation/state`` (eef pos, axis-angle, gripper qpos:
  8 float64), ``prompt``;
- vla-eval (allenai/vla-evaluation-harness ``src/vla_eval/benchmarks/libero/benchmark.py``):
  ``images.agentview``, ``images.wrist`` (upright, as rendered), ``states`` (the same 8
  numbers), ``task_description``.

Override any of them with ``?keys=image_primary:observation/image,image_wrist:,...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from evalharness.policies.common.options import OptionError

#: the standard keys a key map can send (see evalharness.policies.base).
STANDARD_KEYS = ("image_primary", "image_wrist", "proprio", "language_instruction")

DEFAULT_KEYS: Mapping[str, Mapping[str, str]] = {
    "openpi": {
        "image_primary": "observation/image",
        "image_wrist": "observation/wrist_image",
        "proprio": "observation/state",
        "language_instruction": "prompt",
    },
    "vlaeval": {
        "image_primary": "images.agentview",
        "image_wrist": "images.wrist",
        "proprio": "states",
        "language_instruction": "task_description",
    },
}


def parse_key_map(protocol: str, text: str | None, owner: str) -> dict[str, str]:
    """The protocol's default key map with ``keys=std:wire,std:wire`` overrides applied."""
    keys = dict(DEFAULT_KEYS[protocol])
    if not text:
        return keys
    for item in text.split(","):
        standard, sep, wire = item.partition(":")
        standard = standard.strip()
        if not sep or standard not in STANDARD_KEYS:
            raise OptionError(
                f"{owner}: option keys={text!r}: item {item!r} must be STANDARD:WIRE with "
                f"STANDARD one of {', '.join(STANDARD_KEYS)} (an empty WIRE leaves it out)"
            )
        keys[standard] = wire.strip()
    return {k: v for k, v in keys.items() if v}


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, C) uint8 image to fit (height, width) keeping its aspect ratio, with
    PIL's bilinear filter, and centre it on zeros: what openpi's LIBERO client sends
    (``openpi_client.image_tools.resize_with_pad``). An image already that size is returned
    as it is."""
    cur_h, cur_w = image.shape[:2]
    if (cur_h, cur_w) == (height, width):
        return image
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(image)).resize(
            (new_w, new_h), resample=Image.Resampling.BILINEAR
        )
    )
    out = np.zeros((height, width, image.shape[2]), dtype=image.dtype)
    top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
    out[top : top + new_h, left : left + new_w] = resized
    return out


def _put(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = target
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value


def wire_observation(
    obs: Mapping[str, np.ndarray],
    row: int,
    instruction: str,
    keys: Mapping[str, str],
    image_size: int | None,
    state_dtype: type[np.floating[Any]] = np.float64,
) -> dict[str, Any]:
    """One env's newest observation (row ``row`` of a windowed batch) under the wire names
    of ``keys``; images resized with padding to ``image_size`` squared when it is set."""
    out: dict[str, Any] = {}
    for standard, wire in keys.items():
        if standard == "language_instruction":
            _put(out, wire, str(instruction))
            continue
        if standard not in obs:
            raise OptionError(
                f"the key map sends {standard!r} as {wire!r} but the env's observation has no "
                f"{standard!r} (it has {', '.join(sorted(obs))})"
            )
        value = np.asarray(obs[standard][row, -1])
        if standard.startswith("image_"):
            value = np.ascontiguousarray(value, dtype=np.uint8)
            if image_size:
                value = resize_with_pad(value, image_size, image_size)
        else:
            value = value.astype(state_dtype)
        _put(out, wire, value)
    return out
