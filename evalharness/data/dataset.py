"""`open_dataset`: one entry point from a path and a spec to episodes, statistics and batches.

    >>> from evalharness.data import open_dataset
    >>> ds = open_dataset("datasets/libero_spatial", "libero")          # LIBERO HDF5 folder
    >>> ds = open_dataset("rlds/libero_spatial_no_noops/1.0.0", "libero_rlds")
    >>> stats = ds.statistics()                  # Octo's dataset_statistics.json layout
    >>> batches = ds.batches(window_size=2, action_horizon=4, batch_size=32, seed=0,
    ...                      normalization="normal")
    >>> batch = next(batches)                    # batch["action"]: (32, 2, 4, 7)

Episodes are read once and kept in memory by `load`/`batches`/`statistics` (the tiny and
LIBERO-sized datasets finetuning uses fit); `episodes()` streams without caching.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from evalharness.data.episode import Episode
from evalharness.data.errors import DatasetError
from evalharness.data.lerobot import is_lerobot_dataset, read_lerobot, stored_statistics
from evalharness.data.libero_hdf5 import read_libero_hdf5
from evalharness.data.rlds import read_rlds
from evalharness.data.spec import DatasetSpec, get_spec
from evalharness.data.statistics import compute_statistics, normalize_batch, write_statistics
from evalharness.data.windows import BatchSampler, pad_action_dim
from evalharness.policies.common import hub
from evalharness.policies.common.normalization import NormalizationType, select_statistics


def detect_format(path: str | Path) -> str | None:
    """``rlds`` for a TFDS folder, ``libero_hdf5`` for .hdf5 files, ``lerobot`` for a folder
    with ``meta/info.json``, None when unclear."""
    path = Path(path)
    if path.is_file() and path.suffix in (".hdf5", ".h5"):
        return "libero_hdf5"
    if path.is_dir():
        if is_lerobot_dataset(path):
            return "lerobot"
        if (path / "features.json").is_file() or any(
            (p / "features.json").is_file() for p in path.iterdir() if p.is_dir()
        ):
            return "rlds"
        if any(path.glob("*.hdf5")):
            return "libero_hdf5"
    return None


class Dataset:
    """Episodes of one dataset read through one spec."""

    def __init__(self, path: str | Path, spec: DatasetSpec, split: str = "train") -> None:
        self.path = Path(path)
        self.spec = spec
        self.split = split
        self._episodes: list[Episode] | None = None
        self._statistics: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, spec={self.spec.name!r})"

    def episodes(self) -> Iterator[Episode]:
        """Stream standard episodes (see `evalharness.data.episode`) in file order.

        Episodes the no-op filter empties entirely are skipped.
        """
        if self._episodes is not None:
            yield from self._episodes
            return
        if self.spec.format == "libero_hdf5":
            stream = read_libero_hdf5(self.path, self.spec)
        elif self.spec.format == "lerobot":
            stream = read_lerobot(self.path, self.spec)
        else:
            stream = read_rlds(self.path, self.spec, self.split)
        for episode in stream:
            if len(episode["action"]):
                yield episode

    def load(self) -> list[Episode]:
        """All episodes, read once and cached."""
        if self._episodes is None:
            self._episodes = list(self.episodes())
            if not self._episodes:
                raise DatasetError(f"{self.path}: no episodes with transitions")
        return self._episodes

    def __len__(self) -> int:
        return len(self.load())

    def subset(self, indices: Sequence[int]) -> Dataset:
        """The episodes at ``indices`` (reading order) as a dataset of their own, whose
        statistics cover only them: how finetuning holds demos out for its open-loop check."""
        episodes = self.load()
        bad = [i for i in indices if not 0 <= i < len(episodes)]
        if bad or not indices:
            raise DatasetError(
                f"{self.path}: cannot take episodes {list(indices)[:10]} of {len(episodes)}"
            )
        out = Dataset(self.path, self.spec, self.split)
        out._episodes = [episodes[i] for i in indices]
        return out

    def statistics(self) -> dict[str, Any]:
        """Octo-layout statistics (see `evalharness.data.statistics`), computed once."""
        if self._statistics is None:
            if self.spec.statistics == "stored":
                self._statistics = stored_statistics(self.path, self.spec, self.load())
            else:
                self._statistics = compute_statistics(self.load(), self.spec)
        return self._statistics

    def write_statistics(self, out: str | Path) -> Path:
        """Write ``dataset_statistics.json`` into folder ``out`` (or to file ``out``)."""
        return write_statistics(self.statistics(), out)

    def sampler(
        self,
        window_size: int,
        action_horizon: int,
        batch_size: int,
        seed: int = 0,
        *,
        normalization: NormalizationType | str | None = None,
        action_dim: int | None = None,
        statistics: Mapping[str, Any] | None = None,
    ) -> BatchSampler:
        """A `BatchSampler` whose batches are normalized with ``statistics`` (default: this
        dataset's) when ``normalization`` is ``"normal"``/``"bounds"``, then action-padded to
        ``action_dim`` when given."""
        selected = None
        if normalization is not None:
            # Parsed and checked once here, not on every batch of the training loop.
            selected = select_statistics(
                statistics if statistics is not None else self.statistics()
            )

        def transform(batch: dict[str, Any]) -> dict[str, Any]:
            if normalization is not None and selected is not None:
                batch = normalize_batch(batch, selected, normalization)
            if action_dim is not None:
                batch = pad_action_dim(batch, action_dim)
            return batch

        return BatchSampler(
            self.load(), window_size, action_horizon, batch_size, seed, transform=transform
        )

    def batches(
        self,
        window_size: int,
        action_horizon: int,
        batch_size: int,
        seed: int = 0,
        *,
        normalization: NormalizationType | str | None = None,
        action_dim: int | None = None,
        statistics: Mapping[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Endless fixed-size batches (see `sampler` and `evalharness.data.windows`)."""
        return iter(
            self.sampler(
                window_size,
                action_horizon,
                batch_size,
                seed,
                normalization=normalization,
                action_dim=action_dim,
                statistics=statistics,
            )
        )


def open_dataset(
    path: str | Path,
    spec: DatasetSpec | str | Mapping[str, Any] = "libero",
    split: str = "train",
) -> Dataset:
    """Open a dataset with a spec (a `DatasetSpec`, a preset name, a dict or a .json file).

    A spec whose format does not match what is at ``path`` is an error that names the preset
    to use instead. ``path`` may be a hub reference, ``hf://datasets/ORG/NAME[@REV][/PATH]``
    (`evalharness.policies.common.hub`; read from the local cache when offline).
    """
    resolved = get_spec(spec)
    try:
        path = Path(hub.local_path(str(path), default_repo_type="dataset"))
    except hub.HubError as exc:
        raise DatasetError(str(exc)) from exc
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    found = detect_format(path)
    if found is not None and found != resolved.format:
        hint = {"rlds": "libero_rlds", "libero_hdf5": "libero", "lerobot": "libero_lerobot"}[found]
        raise DatasetError(
            f"{path} holds {found} data but spec {resolved.name!r} is for {resolved.format}; "
            f"use a {found} spec such as {hint!r}"
        )
    return Dataset(path, resolved, split)
