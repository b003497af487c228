"""The run directory: what a run writes where, and whether a directory may take a run.

    OUT/episodes.csv      one row per finished episode, appended and fsynced as it ends: the
                          source of truth (evalharness.results)
    OUT/summary.csv       per task and suite, derived from episodes.csv
    OUT/results.json      the same numbers for lm-evaluation-harness and LeRobot readers
                          (evalharness.results_json), derived from episodes.csv and run.json
    OUT/run.json          config, identity, versions, status; rewritten atomically as it goes
    OUT/videos/<suite>/   mp4s of the first `--video N` episodes of each task
    OUT/train_log.csv     the finetune's loss log, for runs made by `finetune-then-eval`

Every module that reads or writes a run directory (the runner, `summarize`, `compare`,
`dashboard`, `finetune-then-eval`) takes these names from here.

A directory takes a new run only if it holds none; `--resume` continues one only if the
identity recorded in its run.json (everything that changes outcomes, see
`evalharness.identity`) equals the new run's, and names every field that differs otherwise.

    >>> run_dir = RunDir("results/libero_spatial-zero")
    >>> run_dir.episodes_csv.name, videos_dir(run_dir.path, "libero_spatial").as_posix()
    ('episodes.csv', 'results/libero_spatial-zero/videos/libero_spatial')
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from evalharness.envs.scenes import SEEDINGS
from evalharness.errors import RunError
from evalharness.identity import (
    checkpoint_identity,
    differing_fields,
    identity_hash,
    lookup,
    normalize,
    outcome_versions,
)
from evalharness.protocols import DESCRIPTIVE_FIELDS, complete_legacy_protocol
from evalharness.results import (
    EpisodeLog,
    ResultsFileError,
    atomic_write_json,
    read_episodes,
    summarize,
    write_summary,
)

__all__ = [
    "EPISODES_CSV",
    "IDENTITY_FIELDS",
    "MIN_FREE_BYTES",
    "RESULTS_JSON",
    "RUN_JSON",
    "SUMMARY_CSV",
    "TRAIN_LOG_CSV",
    "VIDEOS_DIR",
    "RunDir",
    "append_episode",
    "outcome_identity",
    "recorded_fields",
    "regenerate_summary",
    "videos_dir",
]

EPISODES_CSV = "episodes.csv"
SUMMARY_CSV = "summary.csv"
RESULTS_JSON = "results.json"
RUN_JSON = "run.json"
VIDEOS_DIR = "videos"
TRAIN_LOG_CSV = "train_log.csv"

#: run.json entries that must match for `--resume` to continue a run written before run.json
#: held an `identity` (newer runs compare `identity_hash`, see evalharness.identity).
IDENTITY_FIELDS = ("suite", "policy", "protocol", "env")
#: an output directory with less free space than this is refused before any env is built.
MIN_FREE_BYTES = 64 * 1024 * 1024


def videos_dir(out_dir: str | os.PathLike[str], suite: str) -> Path:
    """Where a run's videos of `suite` go."""
    return Path(out_dir) / VIDEOS_DIR / suite


def recorded_fields(
    suite: str, policy: str, protocol: Mapping[str, Any], env: Mapping[str, Any]
) -> dict[str, Any]:
    """The `IDENTITY_FIELDS` as run.json holds them (the env without its video directory,
    which changes no outcome), JSON-normalized so that they compare equal to a read-back."""
    fields = {
        "suite": suite,
        "policy": policy,
        "protocol": dict(protocol),
        "env": dict(env) | {"video_dir": None},
    }
    return dict(json.loads(json.dumps(fields, default=str)))


def outcome_identity(
    fields: Mapping[str, Any],
    checkpoint_path: str | None,
    versions: Mapping[str, str],
    policy_identity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that changes outcomes (see evalharness.identity), hashed into run.json:
    `recorded_fields`, the checkpoint's content hash (and, for a hub reference, the commit it
    resolved to) and the outcome-relevant versions, plus what identifies a model beyond a
    checkpoint file (a policy server's metadata), if any."""
    identity = (
        dict(fields)
        | checkpoint_identity(checkpoint_path)
        | {"versions": outcome_versions(versions)}
    )
    # Absent for local policies, so their identities are unchanged.
    if policy_identity:
        identity["policy_identity"] = dict(policy_identity)
    return dict(normalize(identity))


def append_episode(log: EpisodeLog, row: Mapping[str, object]) -> None:
    """Append one episode row; a full disk or lost mount becomes a `RunError` saying that the
    rows before it are intact and how to go on."""
    try:
        log.append(row)
    except OSError as exc:
        raise RunError(
            f"cannot append to {log.path}: {exc.strerror or exc}; the episodes "
            "recorded before this one are intact, free space and rerun with --resume"
        ) from exc


class RunDir:
    """One run directory and the checks made before a run writes into it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def episodes_csv(self) -> Path:
        """`OUT/episodes.csv`."""
        return self.path / EPISODES_CSV

    @property
    def summary_csv(self) -> Path:
        """`OUT/summary.csv`."""
        return self.path / SUMMARY_CSV

    @property
    def run_json(self) -> Path:
        """`OUT/run.json`."""
        return self.path / RUN_JSON

    @property
    def results_json(self) -> Path:
        """`OUT/results.json`."""
        return self.path / RESULTS_JSON

    def check_writable(self) -> None:
        """Create the directory; refuse one that cannot be written or lacks free space."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as exc:
            raise RunError(
                f"output directory {self.path} is not writable ({exc.strerror or exc}); "
                "choose another --out"
            ) from None
        free = shutil.disk_usage(self.path).free
        if free < MIN_FREE_BYTES:
            raise RunError(
                f"output directory {self.path} has {free / 2**20:.1f} MiB free; a run needs at "
                f"least {MIN_FREE_BYTES / 2**20:.0f} MiB for its results and videos. Free some "
                "space or choose another --out"
            )

    def check_resume(self, identity: Mapping[str, Any], resume: bool) -> None:
        """Refuse a directory that holds a run unless `resume`, and a resumed run whose
        recorded identity differs from `identity` (an `outcome_identity`), naming each field."""
        if not resume:
            if self.episodes_csv.exists() or self.run_json.exists():
                raise RunError(
                    f"{self.path} already holds a run ({EPISODES_CSV} or {RUN_JSON} exists); "
                    "pass --resume to finish it, or choose another --out"
                )
            return
        if not self.run_json.exists():
            return
        try:
            previous = json.loads(self.run_json.read_text())
        except (OSError, ValueError) as exc:
            raise RunError(
                f"--resume into {self.path} refused: cannot read {self.run_json}: {exc}"
            ) from None
        refused = f"--resume into {self.path} refused: the run there differs in"
        if isinstance(previous.get("identity"), dict):
            if previous.get("identity_hash") == identity_hash(identity):
                return
            recorded = _complete_legacy_seeding(previous["identity"], identity)
            if recorded is not previous["identity"] and identity_hash(recorded) == identity_hash(
                identity
            ):
                return  # a run from before the stated seeding, with the same scenes
            fields = differing_fields(recorded, identity)
            if fields and all(_descriptive(f) for f in fields):
                return  # only the wording of the protocol's description changed
            fields = [f for f in fields if not _descriptive(f)] or ["identity_hash"]
            if "protocol.seeding" in fields and recorded is not previous["identity"]:
                raise RunError(_seeding_changed(self.path, recorded, identity))
            details = "; ".join(
                f"{f}: recorded {lookup(recorded, f)!r}, now {lookup(identity, f)!r}"
                for f in fields
            )
        else:  # written before run.json held an identity: compare what it recorded
            fields = [f for f in IDENTITY_FIELDS if previous.get(f) != identity[f]]
            if not fields:
                return
            details = "; ".join(
                f"{f}: recorded {previous.get(f)!r}, now {identity[f]!r}" for f in fields
            )
        raise RunError(
            f"{refused} {', '.join(fields)} ({details}). Use another --out for a different "
            "configuration."
        )

    def finished_keys(self) -> set[tuple[str, int, int]]:
        """(suite, task_id, episode_index) of every episode already recorded."""
        done = self.read_episodes()
        return {
            (s, int(t), int(e))
            for s, t, e in zip(done["suite"], done["task_id"], done["episode_index"], strict=True)
        }

    def write_run_json(self, info: Mapping[str, Any]) -> None:
        """Replace run.json atomically: a reader sees the old file or the new one, never half."""
        atomic_write_json(self.run_json, info)

    def read_episodes(self) -> pd.DataFrame:
        """episodes.csv as a frame (see `evalharness.results.read_episodes`)."""
        return read_episodes(self.episodes_csv)

    def write_summary(
        self, protocol: Mapping[str, Any] | None, episodes: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Summarize `episodes` (default: episodes.csv) into summary.csv, headed by
        `protocol`'s fields, and results.json (`write_results_json`); return the summary."""
        episodes = self.read_episodes() if episodes is None else episodes
        summary = summarize(episodes)
        write_summary(summary, self.summary_csv, header=protocol)
        self.write_results_json(episodes)
        return summary

    def write_results_json(self, episodes: pd.DataFrame | None = None) -> None:
        """Write results.json from `episodes` (default: episodes.csv) and run.json as it is
        now (`evalharness.results_json`)."""
        from evalharness.results_json import results_document

        episodes = self.read_episodes() if episodes is None else episodes
        run: dict[str, Any] | None = None
        if self.run_json.exists():
            try:
                loaded = json.loads(self.run_json.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ResultsFileError(f"{self.run_json}: not valid JSON ({exc})") from None
            run = loaded if isinstance(loaded, dict) else None
        atomic_write_json(self.results_json, results_document(episodes, run, self.path))


def _descriptive(field: str) -> bool:
    """Whether a dotted identity field is a protocol's description (changes no outcome)."""
    return any(
        field == f"protocol.{name}" or field.startswith(f"protocol.{name}.")
        for name in DESCRIPTIVE_FIELDS
    )


def _complete_legacy_seeding(
    recorded: Mapping[str, Any], identity: Mapping[str, Any]
) -> Mapping[str, Any]:
    """`recorded` with a protocol from before the stated seeding written out as what it ran
    (`complete_legacy_protocol`); `recorded` itself when it is newer."""
    protocol = recorded.get("protocol")
    current = identity.get("protocol")
    if not isinstance(protocol, dict) or not isinstance(current, dict):
        return recorded
    completed = complete_legacy_protocol(protocol, current)
    if completed is None:
        return recorded
    return dict(normalize(dict(recorded) | {"protocol": completed}))


def _seeding_changed(path: Path, recorded: Mapping[str, Any], identity: Mapping[str, Any]) -> str:
    old, new = recorded["protocol"], identity["protocol"]
    seed = old.get("env_seed") if old.get("env_seed") is not None else old.get("seed")
    now = new.get("env_seed") if new.get("env_seed") is not None else new.get("seed")
    return (
        f"--resume into {path} refused: the seeding changed. Its episodes ran with "
        f"evalharness's former seeding (per_episode: episode i's reset seeded with {seed} + i); "
        f"protocol {new.get('name')} now seeds {new.get('seeding')} with env seed {now} "
        f"({SEEDINGS.get(str(new.get('seeding')), '')}), so LIBERO places the fixtures elsewhere "
        "and the recorded episodes saw other scenes than the new ones would. Finish it under "
        f"the former seeding with --seeding per_episode --env-seed {seed}, or start the new "
        "seeding in another --out."
    )


def regenerate_summary(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Rebuild ``run_dir/summary.csv`` and ``run_dir/results.json`` from
    ``run_dir/episodes.csv`` (and run.json) and return the summary.

    The ``protocol`` entry of ``run_dir/run.json``, when present, becomes the summary header.
    """
    directory = RunDir(run_dir)
    header: Mapping[str, Any] | None = None
    if directory.run_json.exists():
        try:
            meta = json.loads(directory.run_json.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ResultsFileError(f"{directory.run_json}: not valid JSON ({exc})") from None
        protocol = meta.get("protocol") if isinstance(meta, dict) else None
        if protocol is not None:
            if not isinstance(protocol, dict):
                raise ResultsFileError(
                    f"{directory.run_json}: 'protocol' must be an object, got "
                    f"{type(protocol).__name__}"
                )
            header = protocol
    return directory.write_summary(header)
