"""`DatasetSpec`: one declarative description per dataset of how its files map to the standard.

A spec says where each standard key comes from, which way the stored images face, which gripper
convention the stored actions use and which one the model is trained in, and whether OpenVLA's
no-op filter applies. Readers apply exactly what the spec says, once; nothing else in the
harness renames keys or flips images.

Presets (``get_spec(name)``):

- ``libero``: LIBERO / robomimic HDF5 as LIBERO ships it and ``evalharness record`` writes it
  (``obs/agentview_rgb`` stored upside down as rendered, gripper −1 open / +1 close).
- ``libero_rlds``: OpenVLA's ``modified_libero_rlds`` (``libero_*_no_noops``): images already
  rotated 180° during conversion, ``state`` = EEF pose 6 + gripper qpos 2, raw LIBERO gripper
  actions that OpenVLA's ``libero_dataset_transform`` maps to 1 = open / 0 = closed.
- ``libero_lerobot``: the LIBERO LeRobotDatasets LeRobot trains on (``lerobot/libero``, mp4
  cameras; ``HuggingFaceVLA/libero``, PNG in parquet): ``observation.images.image`` (agentview)
  and ``observation.images.image2`` (wrist), ``observation.state`` 8, ``action`` 7. They are
  openpi's conversion of the OpenVLA RLDS copy, so the same conventions: upright frames (LeRobot's
  LIBERO env processor rotates the simulator's frames 180° to match them), raw LIBERO gripper.
- ``libero_lerobot_openpi``: openpi's own conversion (``physical-intelligence/libero``,
  openpi ``examples/libero/convert_libero_data_to_lerobot.py``): the same data under the keys
  ``image``, ``wrist_image``, ``state``, ``actions``.

``spec.to_dict()`` is what a checkpoint stores beside its weights (``dataset_spec.json``);
``DatasetSpec.from_dict`` reads it back, and ``spec.eval_image_transform`` says what evaluation
must apply to the env's standard (upright) frames to show the model what it was trained on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.data.errors import DatasetError
from evalharness.envs.rotations import ORIENTATIONS, rotate180
from evalharness.policies.common.normalization import Gripper

FORMATS = ("libero_hdf5", "rlds", "lerobot")
#: Where normalization statistics come from: computed from the episodes as read (``data``), or
#: a LeRobotDataset's own ``meta/stats.json`` (``stored``; see `evalharness.data.lerobot`).
STATISTICS_SOURCES = ("data", "stored")
#: Orientations (``envs.rotations.ORIENTATIONS``): ``raw`` is robosuite's OpenGL render, upside
#: down (LIBERO HDF5); ``upright`` is rotated 180°, what the harness' env produces and what
#: OpenVLA/Octo/LeRobot LIBERO data holds.
IMAGE_TRANSFORMS = ("none", "rot180")


def apply_image_transform(images: np.ndarray, transform: str) -> np.ndarray:
    """Apply ``"none"`` or ``"rot180"`` to images (..., H, W, C).

    ``rot180`` is the per-frame ``envs.libero.upright`` (``img[::-1, ::-1]``) over a stack.
    """
    if transform == "none":
        return images
    if transform == "rot180":
        return rotate180(images)
    raise DatasetError(f"unknown image transform {transform!r}; expected one of {IMAGE_TRANSFORMS}")


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset's files map to standard episodes.

    Keys are paths relative to one episode: for LIBERO HDF5 relative to ``data/demo_i``
    (``obs/agentview_rgb``, ``actions``); for RLDS relative to ``steps/``
    (``observation/image``, ``action``, ``language_instruction``); for a LeRobotDataset its
    feature names (``observation.images.image``, ``action``; language from ``task_index``).

    Fields:
        name: preset or user name, recorded with the checkpoint.
        format: ``libero_hdf5``, ``rlds`` or ``lerobot``.
        image_keys: standard image key (``image_primary``, ``image_wrist``, any ``image_*``) →
            source key.
        proprio_keys: source keys concatenated, in order, into ``proprio``; empty = no proprio.
        proprio_dims: the expected width of each proprio key (checked), or empty to accept any.
        action_key / action_dim: where actions live and their width (None = any width).
        language_key: per-step text key (RLDS); None reads HDF5's ``problem_info`` attribute.
        image_sizes: standard image key → (height, width) to resize to (lanczos3, as Octo);
            keys not listed keep their stored size.
        stored_orientation / model_orientation: ``raw`` or ``upright``; the reader rotates by
            180° exactly when they differ.
        gripper_in_file / gripper_for_model: conventions of the last action dim
            (``policies.common.normalization.Gripper``); converted with ``convert_gripper``.
        filter_noops: drop OpenVLA's no-op transitions (``‖a[:-1]‖ < noop_threshold`` and the
            gripper equal to the previous kept action's; the first kept action by norm only).
        action_normalization_mask: per action dim, whether statistics normalize it; None means
            every dim but the last (the gripper stays as is, as in Octo and OpenVLA).
        statistics: ``data`` (computed from the episodes as read, the default) or ``stored``
            (a LeRobotDataset's own ``meta/stats.json``, taken as it is).
    """

    name: str
    format: str
    image_keys: Mapping[str, str] = field(default_factory=dict)
    proprio_keys: tuple[str, ...] = ()
    proprio_dims: tuple[int, ...] = ()
    action_key: str = "actions"
    action_dim: int | None = 7
    language_key: str | None = None
    image_sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    stored_orientation: str = "upright"
    model_orientation: str = "upright"
    gripper_in_file: Gripper = Gripper.LIBERO
    gripper_for_model: Gripper = Gripper.OCTO
    filter_noops: bool = False
    noop_threshold: float = 1e-4
    action_normalization_mask: tuple[bool, ...] | None = None
    statistics: str = "data"

    def __post_init__(self) -> None:
        def fail(field_name: str, value: Any, expected: str) -> DatasetError:
            return DatasetError(
                f"DatasetSpec({self.name!r}).{field_name} = {value!r}; expected {expected}"
            )

        if not isinstance(self.name, str) or not self.name:
            raise fail("name", self.name, "a non-empty string")
        if self.format not in FORMATS:
            raise fail("format", self.format, f"one of {', '.join(FORMATS)}")
        if not isinstance(self.image_keys, Mapping):
            raise fail("image_keys", self.image_keys, "a mapping standard key -> source key")
        for key, source in self.image_keys.items():
            if not (isinstance(key, str) and key.startswith("image_")):
                raise fail("image_keys", key, "standard image keys named image_* (image_primary)")
            if not isinstance(source, str) or not source:
                raise fail(f"image_keys[{key!r}]", source, "a non-empty source key")
        object.__setattr__(self, "image_keys", dict(self.image_keys))
        object.__setattr__(self, "proprio_keys", tuple(self.proprio_keys))
        object.__setattr__(self, "proprio_dims", tuple(self.proprio_dims))
        if not all(isinstance(k, str) and k for k in self.proprio_keys):
            raise fail("proprio_keys", self.proprio_keys, "non-empty source keys")
        if self.proprio_dims and len(self.proprio_dims) != len(self.proprio_keys):
            raise fail(
                "proprio_dims", self.proprio_dims, f"one width per proprio key {self.proprio_keys}"
            )
        if not all(isinstance(d, int) and d >= 1 for d in self.proprio_dims):
            raise fail("proprio_dims", self.proprio_dims, "positive ints")
        if not isinstance(self.action_key, str) or not self.action_key:
            raise fail("action_key", self.action_key, "a non-empty source key")
        if self.action_dim is not None and (
            not isinstance(self.action_dim, int) or self.action_dim < 1
        ):
            raise fail("action_dim", self.action_dim, "an int >= 1 or None")
        if self.language_key is not None and not isinstance(self.language_key, str):
            raise fail("language_key", self.language_key, "a source key or None")
        sizes: dict[str, tuple[int, int]] = {}
        for key, size in dict(self.image_sizes).items():
            if key not in self.image_keys:
                raise fail(
                    "image_sizes", key, f"one of the spec's image keys {sorted(self.image_keys)}"
                )
            try:
                height, width = (int(s) for s in size)
            except (TypeError, ValueError):
                raise fail(f"image_sizes[{key!r}]", size, "(height, width)") from None
            if min(height, width) < 1:
                raise fail(f"image_sizes[{key!r}]", size, "positive (height, width)")
            sizes[key] = (height, width)
        object.__setattr__(self, "image_sizes", sizes)
        for name in ("stored_orientation", "model_orientation"):
            if getattr(self, name) not in ORIENTATIONS:
                raise fail(name, getattr(self, name), f"one of {', '.join(ORIENTATIONS)}")
        for name in ("gripper_in_file", "gripper_for_model"):
            try:
                object.__setattr__(self, name, Gripper.parse(getattr(self, name)))
            except ValueError as exc:
                raise DatasetError(f"DatasetSpec({self.name!r}).{name}: {exc}") from None
        if not isinstance(self.filter_noops, bool):
            raise fail("filter_noops", self.filter_noops, "true or false")
        if not isinstance(self.noop_threshold, int | float) or not self.noop_threshold > 0:
            raise fail("noop_threshold", self.noop_threshold, "a number > 0")
        if self.action_normalization_mask is not None:
            mask = tuple(self.action_normalization_mask)
            if not all(isinstance(m, bool | np.bool_) for m in mask):
                raise fail("action_normalization_mask", mask, "a list of true/false")
            if self.action_dim is not None and len(mask) != self.action_dim:
                raise fail(
                    "action_normalization_mask", mask, f"{self.action_dim} entries (action_dim)"
                )
            object.__setattr__(self, "action_normalization_mask", tuple(bool(m) for m in mask))
        if self.statistics not in STATISTICS_SOURCES:
            raise fail("statistics", self.statistics, f"one of {', '.join(STATISTICS_SOURCES)}")
        if self.statistics == "stored" and self.format != "lerobot":
            raise fail("statistics", self.statistics, "'data' (only LeRobotDatasets store theirs)")

    # -- what the reader does -------------------------------------------------------------

    @property
    def image_transform(self) -> str:
        """What the reader applies to stored images: ``rot180`` when orientations differ."""
        return "none" if self.stored_orientation == self.model_orientation else "rot180"

    @property
    def eval_image_transform(self) -> str:
        """What evaluation applies to the env's upright frames so the model sees training data's
        orientation: ``none`` for upright models, ``rot180`` for models trained on raw frames."""
        return "none" if self.model_orientation == "upright" else "rot180"

    def action_mask(self, action_dim: int) -> np.ndarray:
        """The statistics mask for actions of width ``action_dim``."""
        if self.action_normalization_mask is not None:
            if len(self.action_normalization_mask) != action_dim:
                raise DatasetError(
                    f"DatasetSpec({self.name!r}).action_normalization_mask has "
                    f"{len(self.action_normalization_mask)} entries but the actions have "
                    f"{action_dim} dims"
                )
            return np.asarray(self.action_normalization_mask, dtype=bool)
        mask = np.ones(action_dim, dtype=bool)
        mask[-1] = False
        return mask

    def replace(self, **changes: Any) -> DatasetSpec:
        """A copy with fields changed, validated like a new spec (unknown fields rejected)."""
        _check_keys(changes, self.name)
        return dataclasses.replace(self, **changes)

    # -- serialization --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the derived transforms, for storing with a checkpoint."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Gripper):
                value = value.value
            elif isinstance(value, Mapping):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["image_transform"] = self.image_transform
        out["eval_image_transform"] = self.eval_image_transform
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        """Build a spec from ``to_dict()`` output or a user's dict.

        A ``"base"`` entry names a preset whose fields the others override. Unknown keys are
        errors naming the key and the fields that exist; the derived ``image_transform`` /
        ``eval_image_transform`` are checked against the fields rather than trusted.
        """
        if not isinstance(data, Mapping):
            raise DatasetError(f"a dataset spec must be a mapping, got {type(data).__name__}")
        data = dict(data)
        derived = {k: data.pop(k) for k in ("image_transform", "eval_image_transform") if k in data}
        data.pop("evaluation_orientation", None)  # the finetune driver's note, not a field
        base = data.pop("base", None)
        _check_keys(data, str(data.get("name", base or "<user spec>")))
        if base is not None:
            spec = get_spec(str(base))
            if "name" not in data:
                data["name"] = spec.name
            spec = dataclasses.replace(spec, **_coerce(data))
        else:
            missing = [k for k in ("name", "format") if k not in data]
            if missing:
                raise DatasetError(
                    f"dataset spec is missing {', '.join(missing)}; give them or a "
                    f"'base' preset ({', '.join(PRESETS)})"
                )
            spec = cls(**_coerce(data))
        for key, value in derived.items():
            if getattr(spec, key) != value:
                raise DatasetError(
                    f"dataset spec {spec.name!r}: {key} = {value!r} contradicts its fields, "
                    f"which give {getattr(spec, key)!r}"
                )
        return spec


def _check_keys(data: Mapping[str, Any], name: str) -> None:
    known = [f.name for f in dataclasses.fields(DatasetSpec)]
    for key in data:
        if key not in known:
            raise DatasetError(
                f"dataset spec {name!r}: unknown key {key!r}; available keys: {', '.join(known)}"
            )


def _coerce(data: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples the dataclass holds."""
    out = dict(data)
    for key in ("proprio_keys", "proprio_dims", "action_normalization_mask"):
        if isinstance(out.get(key), list):
            out[key] = tuple(out[key])
    if isinstance(out.get("image_sizes"), Mapping):
        out["image_sizes"] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in out["image_sizes"].items()
        }
    return out


LIBERO = DatasetSpec(
    name="libero",
    format="libero_hdf5",
    image_keys={"image_primary": "obs/agentview_rgb", "image_wrist": "obs/eye_in_hand_rgb"},
    proprio_keys=("obs/ee_states", "obs/gripper_states"),
    proprio_dims=(6, 2),
    action_key="actions",
    action_dim=7,
    language_key=None,
    stored_orientation="raw",
    model_orientation="upright",
    gripper_in_file=Gripper.LIBERO,
    gripper_for_model=Gripper.OCTO,
)

LIBERO_RLDS = DatasetSpec(
    name="libero_rlds",
    format="rlds",
    image_keys={"image_primary": "observation/image", "image_wrist": "observation/wrist_image"},
    proprio_keys=("observation/state",),
    proprio_dims=(8,),
    action_key="action",
    action_dim=7,
    language_key="language_instruction",
    stored_orientation="upright",
    model_orientation="upright",
    gripper_in_file=Gripper.LIBERO,
    gripper_for_model=Gripper.OCTO,
)

#: LIBERO's HDF5 as LIBERO's own robomimic configs read it: ``joint_states`` + ``gripper_states``
#: as low-dim observations, frames kept as stored (raw), LIBERO's gripper. The robomimic UNet
#: trainer routes these to a robomimic checkpoint's keys of the same names.
LIBERO_ROBOMIMIC = dataclasses.replace(
    LIBERO,
    name="libero_robomimic",
    proprio_keys=("obs/joint_states", "obs/gripper_states"),
    proprio_dims=(7, 2),
    model_orientation="raw",
    gripper_for_model=Gripper.LIBERO,
)

LIBERO_LEROBOT = DatasetSpec(
    name="libero_lerobot",
    format="lerobot",
    image_keys={
        "image_primary": "observation.images.image",
        "image_wrist": "observation.images.image2",
    },
    proprio_keys=("observation.state",),
    proprio_dims=(8,),
    action_key="action",
    action_dim=7,
    language_key="task_index",
    stored_orientation="upright",
    model_orientation="upright",
    gripper_in_file=Gripper.LIBERO,
    gripper_for_model=Gripper.OCTO,
)

LIBERO_LEROBOT_OPENPI = dataclasses.replace(
    LIBERO_LEROBOT,
    name="libero_lerobot_openpi",
    image_keys={"image_primary": "image", "image_wrist": "wrist_image"},
    proprio_keys=("state",),
    action_key="actions",
)

PRESETS: dict[str, DatasetSpec] = {
    "libero": LIBERO,
    "libero_rlds": LIBERO_RLDS,
    "libero_robomimic": LIBERO_ROBOMIMIC,
    "libero_lerobot": LIBERO_LEROBOT,
    "libero_lerobot_openpi": LIBERO_LEROBOT_OPENPI,
}


def get_spec(spec: str | Mapping[str, Any] | DatasetSpec | Path) -> DatasetSpec:
    """A spec from a preset name, a dict (see `DatasetSpec.from_dict`), a JSON file, or a spec."""
    if isinstance(spec, DatasetSpec):
        return spec
    if isinstance(spec, Mapping):
        return DatasetSpec.from_dict(spec)
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]
    if text.endswith(".json"):
        try:
            data = json.loads(Path(text).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read dataset spec {text}: {exc}") from None
        return DatasetSpec.from_dict(data)
    raise DatasetError(
        f"unknown dataset spec {text!r}; presets: {', '.join(PRESETS)} (or a .json spec file)"
    )
