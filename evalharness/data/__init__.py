"""Datasets for finetuning: readers, specs, windows/chunks, statistics.

    from evalharness.data import open_dataset
    ds = open_dataset(path, "libero")       # or "libero_rlds", a dict, a .json spec
    ds.episodes()                           # standard episodes (evalharness.data.episode)
    ds.statistics()                         # Octo's dataset_statistics.json layout
    ds.batches(window_size, action_horizon, batch_size, seed, normalization="normal")

Formats: LIBERO/robomimic HDF5 (`libero_hdf5`), RLDS/TFDS (`rlds`, read and written
without TensorFlow) and LeRobotDataset v2.x/v3.0 (`lerobot`, read without the lerobot
package). Every error is a `DatasetError` (a ValueError) naming file, key and what was expected.
"""

from evalharness.data.dataset import Dataset, detect_format, open_dataset
from evalharness.data.episode import Episode, episode_length, noop_mask, standardize_episode
from evalharness.data.errors import DatasetError
from evalharness.data.lerobot import read_lerobot
from evalharness.data.libero_hdf5 import read_libero_hdf5
from evalharness.data.rlds import read_rlds, read_rlds_raw, write_rlds
from evalharness.data.spec import (
    LIBERO,
    LIBERO_LEROBOT,
    LIBERO_RLDS,
    PRESETS,
    DatasetSpec,
    apply_image_transform,
    get_spec,
)
from evalharness.data.statistics import (
    STATISTICS_FILE,
    compute_statistics,
    normalize_batch,
    write_statistics,
)
from evalharness.data.tiny import write_tiny_libero_hdf5, write_tiny_rlds
from evalharness.data.tiny_lerobot import write_tiny_lerobot
from evalharness.data.windows import (
    BatchSampler,
    episode_samples,
    make_sample,
    pad_action_dim,
    stack_samples,
    window_indices,
)

__all__ = [
    "LIBERO",
    "LIBERO_LEROBOT",
    "LIBERO_RLDS",
    "PRESETS",
    "STATISTICS_FILE",
    "BatchSampler",
    "Dataset",
    "DatasetError",
    "DatasetSpec",
    "Episode",
    "apply_image_transform",
    "compute_statistics",
    "detect_format",
    "episode_length",
    "episode_samples",
    "get_spec",
    "make_sample",
    "noop_mask",
    "normalize_batch",
    "open_dataset",
    "pad_action_dim",
    "read_lerobot",
    "read_libero_hdf5",
    "read_rlds",
    "read_rlds_raw",
    "stack_samples",
    "standardize_episode",
    "window_indices",
    "write_rlds",
    "write_statistics",
    "write_tiny_lerobot",
    "write_tiny_libero_hdf5",
    "write_tiny_rlds",
]
