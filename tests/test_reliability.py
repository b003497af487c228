"""Reliability and safety: every fault a run can meet, injected, and what the harness does.

Faults in env workers are injected through `EVALHARNESS_FAULTS` (evalharness.faults), which
spawned workers read at start; everything else is exercised directly. The end-to-end tests
build real LIBERO envs, so they use one task, a few episodes of a few steps and 32 px renders.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rundirs import outcomes

from evalharness import faults
from evalharness.cli import _default_out, main
from evalharness.faults import (
    EnvBuildError,
    FaultPlan,
    FaultSpecError,
    SimUnstableError,
    build_with_retries,
    check_stable,
    parse_faults,
)
from evalharness.identity import checkpoint_digest, differing_fields, identity_hash
from evalharness.policies import Policy, PolicySpec, PolicyStringError, load_policy
from evalharness.protocols import get_protocol
from evalharness.results import (
    EpisodeLog,
    atomic_write_json,
    read_episodes,
    read_summary,
    summarize,
)
from evalharness.run_dir import RunDir, append_episode
from evalharness.runner import PolicyError, RunConfig, RunError, Runner
from evalharness.scheduling import act_batch
from evalharness.worker import Episode, video_filename

TINY = get_protocol("openvla").with_overrides(
    episodes_per_task=3, max_steps=3, num_steps_wait=0, camera_size=32
)


def _config(out: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        suite="libero_spatial",
        policy="random",
        out_dir=out,
        protocol=TINY,
        task_ids=(0,),
        num_envs=1,
        progress=False,
    )
    base.update(kw)
    return RunConfig(**base)


class ScriptedFailure(Policy):
    """Zero actions, until query `fail_at` (1-based): then raises, or returns `bad`."""

    def __init__(self, fail_at: int, bad: Any = None) -> None:
        self.spec = PolicySpec(name="flaky", action_horizon=2, exec_horizon=1)
        self.fail_at = fail_at
        self.bad = bad
        self.queries = 0

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        self.queries += 1
        batch = len(tasks["language_instruction"])
        if self.queries >= self.fail_at:
            if self.bad is None:
                raise RuntimeError("CUDA out of memory (simulated)")
            return self.bad(batch)
        return np.zeros((batch, 2, 7))


# --------------------------------------------------------------------------------------------
# Fault injection hook: test-only, and a typo is an error, not a silent no-op
# --------------------------------------------------------------------------------------------


def test_fault_spec_parses_kinds_and_filters_and_rejects_typos() -> None:
    plan = parse_faults("kill:task=0,episode=1,step=2,attempt=0; egl:times=2")
    assert plan[0] == faults.Fault("kill", task=0, episode=1, step=2, attempt=0)
    assert plan[1] == faults.Fault("egl", times=2)
    assert plan[0].matches(0, 1, 2, 0) and not plan[0].matches(0, 1, 2, 1)
    with pytest.raises(FaultSpecError, match="unknown fault kind 'kil'"):
        parse_faults("kil:task=0")
    with pytest.raises(FaultSpecError, match="'stp=2'"):
        parse_faults("kill:stp=2")
    with pytest.raises(FaultSpecError, match="step='x'"):
        parse_faults("kill:step=x")
    assert FaultPlan.from_env({}).faults == ()


# --------------------------------------------------------------------------------------------
# Env builds: EGL errors retried with backoff, then an error naming MUJOCO_GL
# --------------------------------------------------------------------------------------------


def test_egl_build_error_is_retried_with_backoff_then_succeeds() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def build() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("eglMakeCurrent failed: EGL_BAD_CONTEXT")
        return "env"

    assert build_with_retries(build, "task 0", delays=(1.0, 2.0, 4.0), sleep=sleeps.append) == "env"
    assert sleeps == [1.0, 2.0]


def test_egl_build_error_that_persists_names_mujoco_gl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")
    sleeps: list[float] = []

    def build() -> None:
        raise ImportError("Cannot initialize a EGL device display")

    with pytest.raises(EnvBuildError, match="MUJOCO_GL=egl") as info:
        build_with_retries(build, "the env of libero_spatial task 3", sleep=sleeps.append)
    assert sleeps == list(faults.BUILD_RETRY_DELAYS)
    assert "libero_spatial task 3" in str(info.value) and "4 times" in str(info.value)


def test_non_gl_build_error_is_not_retried() -> None:
    sleeps: list[float] = []

    def build() -> None:
        raise FileNotFoundError("bddl file missing")

    with pytest.raises(EnvBuildError, match="bddl file missing"):
        build_with_retries(build, "task 1", sleep=sleeps.append)
    assert sleeps == []


# --------------------------------------------------------------------------------------------
# Simulator instability detection
# --------------------------------------------------------------------------------------------


class _Warning:
    def __init__(self) -> None:
        self.number = 0


class _FakeData:
    def __init__(self) -> None:
        self.warning = [_Warning() for _ in range(8)]
        self.qpos = np.zeros(3)
        self.qvel = np.zeros(3)


class _FakeSim:
    def __init__(self) -> None:
        self.data = _FakeData()


def test_instability_is_detected_from_mujoco_warnings_nan_state_and_nan_observations() -> None:
    sim = _FakeSim()
    obs = {"proprio": np.zeros((1, 8), np.float32), "language_instruction": "x"}
    before = faults.instability_counts(sim)
    check_stable(sim, before, obs, "here")  # nothing wrong: no error

    sim.data.warning[5].number = 1  # mjWARN_BADQVEL
    with pytest.raises(SimUnstableError, match=r"here: MuJoCo warned .* QVEL"):
        check_stable(sim, before, obs, "here")
    before = faults.instability_counts(sim)
    sim.data.qpos[1] = np.inf
    with pytest.raises(SimUnstableError, match="non-finite simulator qpos"):
        check_stable(sim, before, obs, "here")
    sim.data.qpos[1] = 0.0
    obs["proprio"][0, 2] = np.nan
    with pytest.raises(SimUnstableError, match="non-finite observation 'proprio'"):
        check_stable(sim, before, obs, "here")


# --------------------------------------------------------------------------------------------
# Summaries: a simulator/harness failure is not a policy failure
# --------------------------------------------------------------------------------------------


def _row(i: int, success: bool, reason: str) -> dict[str, object]:
    return {
        "suite": "libero_spatial",
        "task_id": i // 10,
        "task_name": "t",
        "instruction": "do it",
        "episode_index": i % 10,
        "init_state_index": i % 10,
        "seed": 7 + i,
        "success": success,
        "steps": 10,
        "policy": "p",
        "checkpoint": "",
        "wall_seconds": 1.0,
        "failure_reason": reason,
    }


def test_harness_failures_are_excluded_from_the_success_rate_and_counted() -> None:
    rows = [
        _row(0, True, ""),
        _row(1, False, "step_limit"),
        _row(2, False, "worker_died"),
        _row(3, False, "sim_unstable"),
        _row(4, False, "episode_timeout"),
        _row(10, False, "sim_unstable"),  # task 1: nothing left to rate
    ]
    summary = summarize(pd.DataFrame(rows)).set_index(["level", "task_id"])
    task0 = summary.loc[("task", 0)]
    assert (task0["episodes"], task0["successes"], task0["excluded"]) == (2, 1, 3)
    assert task0["success_rate"] == 0.5
    task1 = summary.loc[("task", 1)]
    assert (task1["episodes"], task1["excluded"]) == (0, 1)
    assert np.isnan(task1["success_rate"]) and (task1["ci95_low"], task1["ci95_high"]) == (0, 1)
    suite = summary.loc[("suite", -1)]
    assert (suite["episodes"], suite["successes"], suite["excluded"]) == (2, 1, 4)
    counts = faults.harness_failure_counts(pd.DataFrame(rows))
    assert counts == {"episode_timeout": 1, "sim_unstable": 2, "worker_died": 1}


# --------------------------------------------------------------------------------------------
# Policy failures: the run stops, naming the policy and the shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, r"policy 'flaky' \(flaky\) raised RuntimeError: CUDA out of memory"),
        (lambda b: np.full((b, 2, 7), np.nan), r"non-finite action .* received \(2, 2, 7\)"),
        (lambda b: np.full((b, 2, 7), np.inf), r"non-finite action"),
        (lambda b: np.zeros((b, 7)), r"shape \(2, 7\); expected \(2, 2, 7\)"),
        (lambda b: "left", r"returned str, .* received str"),
    ],
)
def test_policy_raising_or_returning_bad_actions_stops_with_a_clear_error(
    bad: Any, message: str
) -> None:
    policy = ScriptedFailure(1, bad)
    obs = {"proprio": np.zeros((2, 1, 8), np.float32)}
    tasks = {"language_instruction": ["a", "b"], "episode_seed": np.array([1, 2])}
    with pytest.raises(PolicyError, match=message) as info:
        act_batch(policy, obs, tasks, 2, "flaky")
    assert "flaky" in str(info.value) and "(2, 2, 7)" in str(info.value)


@pytest.mark.sim
@pytest.mark.slow
def test_policy_failure_mid_run_keeps_every_finished_episode(tmp_path: Path) -> None:
    # exec_horizon 1, 3 steps: queries 1-3 are episode 0, 4-6 episode 1; query 7 fails.
    out = tmp_path / "run"
    with pytest.raises(PolicyError, match="CUDA out of memory"):
        Runner(_config(out, policy="flaky"), ScriptedFailure(7)).run()
    assert read_episodes(out / "episodes.csv")["episode_index"].tolist() == [0, 1]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "CUDA out of memory" in run["error"]
    assert read_summary(out / "summary.csv").iloc[0]["episodes"] == 2


# --------------------------------------------------------------------------------------------
# Worker deaths, instability, hangs and EGL failures in real runs
# --------------------------------------------------------------------------------------------


@pytest.mark.sim
@pytest.mark.slow
def test_killed_worker_reschedules_once_and_outcomes_match_an_undisturbed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    protocol = TINY.with_overrides(episodes_per_task=4)
    Runner(_config(tmp_path / "reference", protocol=protocol), load_policy("random")).run()

    # Episode 1's worker is SIGKILLed on its first try (rescheduled, then fine); episode 2's
    # worker segfaults on every try (rescheduled once, then recorded as worker_died).
    monkeypatch.setenv(
        faults.FAULTS_ENV, "kill:task=0,episode=1,step=2,attempt=0;segv:task=0,episode=2,step=1"
    )
    faulted = tmp_path / "faulted"
    Runner(_config(faulted, protocol=protocol, num_envs=2), load_policy("random")).run()

    got, want = outcomes(faulted), outcomes(tmp_path / "reference")
    assert got["failure_reason"].tolist() == [
        "step_limit",
        "step_limit",
        "worker_died",
        "step_limit",
    ]
    keep = got["episode_index"] != 2
    pd.testing.assert_frame_equal(got[keep], want[keep])
    run = json.loads((faulted / "run.json").read_text())
    actions = [(i["episode_index"], i["attempt"], i["action"]) for i in run["incidents"]]
    assert actions == [
        (1, 0, "rescheduled on a fresh worker"),
        (2, 0, "rescheduled on a fresh worker"),
        (2, 1, "recorded, excluded from success rates"),
    ] or sorted(actions) == sorted(
        [
            (1, 0, "rescheduled on a fresh worker"),
            (2, 0, "rescheduled on a fresh worker"),
            (2, 1, "recorded, excluded from success rates"),
        ]
    )
    assert "exit code -11" in run["incidents"][-1]["detail"] or any(
        "-11" in i["detail"] for i in run["incidents"]
    )
    assert run["faults_injected"] and run["status"] == "finished"
    summary = read_summary(faulted / "summary.csv")
    assert summary.iloc[0]["episodes"] == 3 and summary.iloc[0]["excluded"] == 1


@pytest.mark.sim
@pytest.mark.slow
def test_a_killed_worker_of_two_envs_takes_both_episodes_and_outcomes_still_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Runner(_config(tmp_path / "reference"), load_policy("random")).run()
    # One worker process hosting two envs: episodes 0 and 1 start side by side; episode 1's
    # step 2 kills the process on its first try, and episode 0 goes down with it.
    monkeypatch.setenv(faults.FAULTS_ENV, "kill:task=0,episode=1,step=2,attempt=0")
    faulted = tmp_path / "faulted"
    Runner(_config(faulted, envs_per_worker=2), load_policy("random")).run()
    pd.testing.assert_frame_equal(outcomes(faulted), outcomes(tmp_path / "reference"))
    run = json.loads((faulted / "run.json").read_text())
    assert run["config"]["envs_per_worker"] == 2
    actions = [(i["episode_index"], i["attempt"], i["action"]) for i in run["incidents"]]
    assert actions == [
        (1, 0, "rescheduled on a fresh worker"),
        (0, 0, "rescheduled with its worker's envs"),
    ]
    assert run["incidents"][1]["detail"].endswith(
        "; the episode ran on env 0 of the same worker process"
    )


@pytest.mark.sim
@pytest.mark.slow
def test_simulator_instability_is_recorded_as_sim_unstable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
    # nan: NaN in qvel (MuJoCo warns "simulation is unstable" and resets); nanobs: NaN in the
    # observed state; raise: an exception inside step.
    monkeypatch.setenv(
        faults.FAULTS_ENV, "nan:episode=0,step=2;nanobs:episode=1,step=1;raise:episode=2,step=3"
    )
    protocol = TINY.with_overrides(episodes_per_task=4)
    out = tmp_path / "run"
    Runner(_config(out, protocol=protocol), load_policy("zero")).run()
    rows = outcomes(out)
    assert rows["failure_reason"].tolist() == ["sim_unstable"] * 3 + ["step_limit"]
    assert rows["steps"].tolist() == [1, 0, 2, 3]  # the steps completed before the fault
    details = [i["detail"] for i in json.loads((out / "run.json").read_text())["incidents"]]
    assert "QVEL" in details[0] and "'proprio'" in details[1] and "injected fault" in details[2]


@pytest.mark.sim
@pytest.mark.slow
def test_hang_inside_an_episode_hits_the_wall_clock_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(faults.FAULTS_ENV, "hang:episode=0,step=2")
    out = tmp_path / "run"
    protocol = TINY.with_overrides(episodes_per_task=2)
    # The limit is generous so that the undisturbed episode never meets it on a loaded machine;
    # the hung one would wait forever without it.
    Runner(_config(out, protocol=protocol, episode_timeout=10.0), load_policy("zero")).run()
    rows = outcomes(out)
    assert rows["failure_reason"].tolist() == ["episode_timeout", "step_limit"]


@pytest.mark.sim
@pytest.mark.slow
def test_egl_failures_are_retried_and_a_persistent_one_stops_the_run_naming_mujoco_gl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(faults.FAULTS_ENV, "egl:times=1")
    protocol = TINY.with_overrides(episodes_per_task=1, max_steps=1)
    Runner(_config(tmp_path / "retried", protocol=protocol), load_policy("zero")).run()
    assert len(read_episodes(tmp_path / "retried" / "episodes.csv")) == 1

    monkeypatch.setenv(faults.FAULTS_ENV, "egl")
    out = tmp_path / "broken"
    with pytest.raises(RunError, match="MUJOCO_GL=") as info:
        Runner(_config(out, protocol=protocol), load_policy("zero")).run()
    assert "4 times" in str(info.value)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "evalharness.cli", "run", "--suite", "libero_spatial",
        "--policy", "zero", "--tasks", "0", "--episodes-per-task", "20", "--max-steps", "3",
        "--num-steps-wait", "0", "--camera-size", "32", "--num-envs", "1", "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_sigint_abandons_in_flight_flushes_and_prints_a_partial_summary(
    tmp_path: Path, signum: int, code: int
) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cli(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    csv = out / "episodes.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.exists() and csv.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    done = read_episodes(csv)
    assert 1 <= len(done) < 20 and csv.read_text().endswith("\n")
    assert "INTERRUPTED after" in stdout and "--resume" in stderr
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["episodes_recorded"] == len(done)
    assert read_summary(out / "summary.csv").iloc[0]["episodes"] == len(done)


# --------------------------------------------------------------------------------------------
# Resume safety
# --------------------------------------------------------------------------------------------


class NamedZero(Policy):
    def __init__(self) -> None:
        self.spec = PolicySpec(name="ckpt")

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        return np.zeros((len(tasks["language_instruction"]), 1, 7))


def test_checkpoint_digest_follows_content_not_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "1" / "default").mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "1" / "default" / "checkpoint").write_bytes(b"weights")
    assert checkpoint_digest(a) == checkpoint_digest(b)
    (b / "1" / "default" / "checkpoint").write_bytes(b"weightz")
    assert checkpoint_digest(a) != checkpoint_digest(b)
    assert checkpoint_digest(tmp_path / "missing") is None and checkpoint_digest(None) is None
    assert differing_fields({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == ["a.c"]
    assert identity_hash({"x": (1, 2)}) == identity_hash({"x": [1, 2]})


def _write_identity(runner: Runner, out: Path, **changes: Any) -> None:
    from evalharness.versions import package_versions

    identity = runner.identity(package_versions())
    for dotted, value in changes.items():
        node = identity
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    atomic_write_json(
        out / "run.json", {"identity": identity, "identity_hash": identity_hash(identity)}
    )


def test_resume_refuses_a_different_checkpoint_content_or_versions_listing_the_fields(
    tmp_path: Path,
) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "weights.msgpack").write_bytes(b"v1")
    out = tmp_path / "run"
    out.mkdir()
    runner = Runner(_config(out, policy=f"ckpt:{ckpt}", resume=True), NamedZero())

    _write_identity(runner, out)
    RunDir(out).check_resume(runner.identity(_versions()), resume=True)  # same: accepted

    (ckpt / "weights.msgpack").write_bytes(b"v2")  # retrained in place, same path
    with pytest.raises(RunError, match=r"differs in checkpoint_sha256 \(checkpoint_sha256:"):
        runner.run()

    _write_identity(runner, out, versions__mujoco="3.8.1", protocol__seed=11)
    with pytest.raises(RunError) as info:
        runner.run()
    text = str(info.value)
    assert "protocol.seed, versions.mujoco" in text and "recorded '3.8.1', now '3.3.2'" in text


def _versions() -> dict[str, str]:
    from evalharness.versions import package_versions

    return package_versions()


def test_truncated_last_csv_line_from_a_crash_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    with EpisodeLog(path) as log:
        log.append(_row(0, True, ""))
        log.append(_row(1, False, "step_limit"))
    whole = path.read_bytes()
    path.write_bytes(whole + b"libero_spatial,0,t,do it,2,2,9,Fal")
    with pytest.warns(UserWarning, match="partial final row"):
        log = EpisodeLog(path)
    assert log.dropped_partial_rows == 1
    log.close()
    assert path.read_bytes() == whole
    assert read_episodes(path)["episode_index"].tolist() == [0, 1]


def test_run_json_and_summary_writes_are_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "run.json"
    atomic_write_json(target, {"status": "running"})

    def crash(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(target, {"status": "finished", "big": "x" * 100_000})
    assert json.loads(target.read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temp file left


# --------------------------------------------------------------------------------------------
# Bad input at the boundary
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--suite", "libero_nope", "--policy", "zero"], "unknown LIBERO suite 'libero_nope'"),
        (["--suite", "libero_spatial", "--policy", "zero", "--tasks", "10"], "task id 10"),
        (["--suite", "libero_spatial", "--policy", "zero", "--tasks", "a-b"], "'a-b'"),
        (["--suite", "libero_spatial", "--policy", "nope"], "unknown policy 'nope'"),
        (["--suite", "libero_spatial", "--policy", "ze ro"], "name 'ze ro'"),
        (["--suite", "libero_spatial", "--policy", "zero:"], "nothing after ':'"),
        (["--suite", "libero_spatial", "--policy", "zero?a=1&a=2"], "'a' given twice"),
        (["--suite", "libero_spatial", "--policy", "zero?horizon=2"], "['horizon']"),
        (["--suite", "libero_spatial", "--policy", "zero", "--episode-timeout", "0"], "> 0"),
    ],
)
def test_bad_run_input_exits_2_naming_the_value(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_output_directory_that_cannot_be_created_or_written_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunError, match=f"output directory {blocker / 'out'} is not writable"):
        Runner(_config(blocker / "out"), load_policy("zero")).run()

    import tempfile

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    with pytest.raises(RunError, match=r"is not writable \(Permission denied\)"):
        Runner(_config(tmp_path / "ro"), load_policy("zero")).run()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(RunError, match="not writable"):
        Runner(_config(ro), load_policy("zero")).run()


def test_output_directory_without_space_is_refused_and_a_full_disk_mid_run_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=5 * 2**20))
    with pytest.raises(RunError, match=r"has 5.0 MiB free; a run needs at least 64 MiB"):
        Runner(_config(tmp_path / "out"), load_policy("zero")).run()

    class FullLog:
        path = tmp_path / "episodes.csv"

        def append(self, row: Mapping[str, object]) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunError, match=r"episodes\.csv: No space left on device; the episodes"):
        append_episode(FullLog(), _row(0, True, ""))  # type: ignore[arg-type]


def _octo_checkpoint(path: Path) -> Path:
    from evalharness.policies.octo.checkpoint import save_checkpoint

    config = {"model": {"observation_tokenizers": {}, "heads": {}}}
    params = {"layer": {"kernel": np.ones((2, 3), np.float32)}}
    return save_checkpoint(path, 1, params, config, {"observation": {}}, {})


def test_octo_checkpoint_missing_config_or_truncated_weights_is_named(tmp_path: Path) -> None:
    from evalharness.policies.common.compat import CheckpointError, check_finite
    from evalharness.policies.octo.checkpoint import load_checkpoint

    good = _octo_checkpoint(tmp_path / "good")
    assert load_checkpoint(good).flat_params["layer/kernel"].shape == (2, 3)

    missing = _octo_checkpoint(tmp_path / "missing")
    (missing / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json is missing"):
        load_checkpoint(missing)

    truncated = _octo_checkpoint(tmp_path / "truncated")
    weights = truncated / "1" / "default" / "checkpoint"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=str(weights)):
        load_checkpoint(truncated)

    garbage = _octo_checkpoint(tmp_path / "garbage")
    (garbage / "1" / "default" / "checkpoint").write_bytes(b"\xc1\xff not msgpack")
    with pytest.raises(CheckpointError, match="checkpoint"):
        load_checkpoint(garbage)

    with pytest.raises(CheckpointError, match="layer/kernel"):
        check_finite({"layer/kernel": np.array([1.0, np.nan])}, "ckpt")


def test_octo_config_cannot_name_arbitrary_python(tmp_path: Path) -> None:
    from evalharness.policies.common.compat import CheckpointError
    from evalharness.policies.octo.checkpoint import check_module_specs

    evil = {"model": {"heads": {"action": {"module": "os", "name": "system", "args": ["x"]}}}}
    with pytest.raises(CheckpointError, match=r"model.heads.action names module os.system"):
        check_module_specs(evil, "config.json")


class _Explodes:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED",))


def test_pickled_code_in_a_torch_checkpoint_is_not_run_without_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from evalharness.policies.common.compat import CheckpointError
    from evalharness.policies.diffusion.checkpoint import read_checkpoint_file

    monkeypatch.chdir(tmp_path)
    import torch

    path = tmp_path / "model.pth"
    torch.save({"model": {}, "payload": _Explodes()}, path)
    with pytest.raises(CheckpointError, match=r"trust=true"):
        read_checkpoint_file(path)
    assert not (tmp_path / "PWNED").exists()
    path.write_bytes(pickle.dumps({"model": {}})[:5])
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint_file(path)


# --------------------------------------------------------------------------------------------
# Untrusted names: no path traversal, no arbitrary imports
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "instruction",
    ["../../../etc/passwd", "/abs/path", "a\\..\\b", "put it\x00 there", "..", "ü" * 400, ""],
)
def test_video_file_names_cannot_escape_the_video_directory(instruction: str) -> None:
    episode = Episode("libero_spatial", 3, 7, 7, 14)
    name = video_filename(episode, instruction, success=False)
    assert "/" not in name and "\\" not in name and "\x00" not in name and ".." not in name
    assert name.startswith("task03_ep007_failure_") and name.endswith(".mp4")
    assert len(name) < 200
    root = Path("/videos/libero_spatial")
    assert (root / name).resolve().parent == root


def test_default_output_directory_from_a_hostile_policy_string_stays_under_results() -> None:
    out = _default_out("libero_spatial", "octo_jax:../../../etc/cron.d?x=1")
    assert out.parent == Path("results") and ".." not in out.parts and "/" not in out.name


@pytest.mark.parametrize(
    "text", ["os:system", "subprocess", "importlib:import_module", "evalharness.cli:main", "a.b"]
)
def test_a_policy_string_cannot_import_arbitrary_modules(text: str) -> None:
    before = set(sys.modules)
    with pytest.raises(PolicyStringError):
        load_policy(text)
    new = {m for m in set(sys.modules) - before if not m.startswith("evalharness.policies")}
    assert new == set()


@pytest.mark.parametrize(
    ("key", "data", "message"),
    [
        ("obs/ee_states", None, "obs/ee_states"),
        ("actions", np.array(["a", "b"], dtype=object), "actions"),
        ("obs/gripper_states", np.zeros((2, 5)), "obs/gripper_states"),
        ("obs/agentview_rgb", np.zeros((2, 8, 8), np.uint8), "obs/agentview_rgb"),
    ],
)
def test_dataset_with_missing_key_object_dtype_or_wrong_shape_names_file_and_key(
    tmp_path: Path, key: str, data: Any, message: str
) -> None:
    h5py = pytest.importorskip("h5py")
    from evalharness.data.errors import DatasetError
    from evalharness.data.libero_hdf5 import read_libero_hdf5
    from evalharness.data.spec import LIBERO

    good = {
        "actions": np.zeros((2, 7)),
        "obs/agentview_rgb": np.zeros((2, 8, 8, 3), np.uint8),
        "obs/eye_in_hand_rgb": np.zeros((2, 8, 8, 3), np.uint8),
        "obs/ee_states": np.zeros((2, 6)),
        "obs/gripper_states": np.zeros((2, 2)),
    }
    path = tmp_path / "task_demo.hdf5"
    with h5py.File(path, "w") as f:
        group = f.create_group("data")
        group.attrs["problem_info"] = '{"language_instruction": "put the bowl on the plate"}'
        demo = group.create_group("demo_0")
        for k, v in good.items():
            if k == key:
                if data is None:
                    continue
                v = data.astype(h5py.string_dtype()) if data.dtype == object else data
            demo.create_dataset(k, data=v)
    with pytest.raises(DatasetError) as info:
        list(read_libero_hdf5(path, LIBERO))
    assert str(path) in str(info.value) and message in str(info.value)
