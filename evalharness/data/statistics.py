"""Dataset statistics for normalization, written as Octo's ``dataset_statistics.json``.

Single-dataset layout (what upstream ``get_dataset_statistics`` caches and what a checkpoint
carries beside its weights)::

    {"action":  {"mean": [...], "std": [...], "min": [...], "max": [...],
                 "p01": [...], "p99": [...], "mask": [...]},
     "proprio": {... same keys ...},
     "num_transitions": N, "num_trajectories": M}

Statistics are over every transition the model trains on: after no-op filtering and gripper
conversion, i.e. in the model's convention. The action ``mask`` comes from the spec (by default
the gripper stays unnormalized); proprio is normalized in every dim.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.data.episode import Episode
from evalharness.data.errors import DatasetError
from evalharness.data.spec import DatasetSpec
from evalharness.policies.common.normalization import (
    ArrayStatistics,
    DatasetStatistics,
    NormalizationType,
    select_statistics,
)

STATISTICS_FILE = "dataset_statistics.json"


def compute_statistics(episodes: Iterable[Episode], spec: DatasetSpec) -> dict[str, Any]:
    """Octo-layout statistics of ``action`` (and ``proprio`` when present) over all steps."""
    actions: list[np.ndarray] = []
    proprios: list[np.ndarray] = []
    trajectories = 0
    for episode in episodes:
        if len(episode["action"]) == 0:
            continue
        trajectories += 1
        actions.append(np.asarray(episode["action"]))
        if "proprio" in episode:
            proprios.append(np.asarray(episode["proprio"]))
    if not actions:
        raise DatasetError("cannot compute statistics: the dataset has no transitions")
    action = np.concatenate(actions)
    out: dict[str, Any] = {
        "action": ArrayStatistics.compute(action, spec.action_mask(action.shape[1])).to_dict()
    }
    if proprios:
        out["proprio"] = ArrayStatistics.compute(np.concatenate(proprios)).to_dict()
    out["num_transitions"] = int(action.shape[0])
    out["num_trajectories"] = trajectories
    return out


def write_statistics(statistics: Mapping[str, Any], path: str | Path) -> Path:
    """Write statistics as JSON; ``path`` is a file or a folder (→ ``dataset_statistics.json``)."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        path = path / STATISTICS_FILE
    path.write_text(json.dumps(statistics, indent=2))
    return path


def normalize_batch(
    batch: Mapping[str, Any],
    statistics: Mapping[str, Any] | DatasetStatistics,
    kind: NormalizationType | str = NormalizationType.NORMAL,
) -> dict[str, Any]:
    """Normalize a sample or batch's ``action`` and ``observation/proprio`` with Octo's
    formulas (``ArrayStatistics.normalize``; masked dims pass through). Padded copies are
    normalized like the values they repeat, as upstream normalizes before chunking.
    ``statistics`` is the JSON layout or, for a loop over batches, its parsed
    ``select_statistics`` result."""
    stats = (
        statistics if isinstance(statistics, DatasetStatistics) else select_statistics(statistics)
    )
    out = dict(batch)
    out["action"] = stats.action.normalize(np.asarray(batch["action"], np.float32), kind)
    observation = batch.get("observation")
    if isinstance(observation, Mapping) and "proprio" in observation:
        if stats.proprio is None:
            raise DatasetError("the batch has proprio but the statistics have none")
        out["observation"] = dict(observation)
        out["observation"]["proprio"] = stats.proprio.normalize(
            np.asarray(observation["proprio"], np.float32), kind
        )
    return out
