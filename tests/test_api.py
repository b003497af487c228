"""The Python API (`evalharness.evaluate`, `evalharness.finetune`), `python -m evalharness`
and `run --option`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evalharness.api import parse_option_items, policy_with_options
from evalharness.cli import main
from evalharness.policies import parse_policy_string


def test_python_dash_m_evalharness_is_the_console_script() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "evalharness", "protocols"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("openvla ")
    script = "import sys; from evalharness.cli import main; sys.exit(main())"
    direct = subprocess.run(
        [sys.executable, "-c", script, "protocols"], capture_output=True, text=True
    )
    assert done.stdout == direct.stdout


def test_options_merge_into_the_policy_string_and_override_its_query() -> None:
    assert policy_with_options("zero", {}) == "zero"
    assert policy_with_options("octo_jax:/c?stats=bridge&device=cpu", {}) == (
        "octo_jax:/c?stats=bridge&device=cpu"
    )
    merged = policy_with_options(
        "octo_jax:/c?stats=bridge&device=cpu", {"device": "cuda:0", "step": "5000"}
    )
    assert merged == "octo_jax:/c?stats=bridge&device=cuda:0&step=5000"
    # A value holding the query's own separators survives the round trip through the parser.
    odd = policy_with_options("random", {"note": "a&b=c d%"})
    assert parse_policy_string(odd).options == {"note": "a&b=c d%"}


def test_option_items_are_key_value_and_a_later_one_wins() -> None:
    assert parse_option_items(["a=1", "b = x=y ", "a=2"]) == {"a": "2", "b": "x=y"}
    assert parse_option_items(["flag="]) == {"flag": ""}
    with pytest.raises(ValueError, match=r"--option 'device' must be KEY=VALUE"):
        parse_option_items(["device"])
    with pytest.raises(ValueError, match=r"--option '=cuda' must be KEY=VALUE"):
        parse_option_items(["=cuda"])


def test_run_option_reaches_the_policy(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    # The policy is built before any env starts: its option parser sees the overriding value.
    argv = ["run", "--suite", "libero_spatial", "--policy", "zero?action_horizon=4"]
    argv += ["--option", "action_horizon=four", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "policy 'zero': option action_horizon='four' must be an integer" in (
        capsys.readouterr().err
    )
    assert main(["run", "--suite", "libero_spatial", "--policy", "zero", "--option", "x"]) == 2
    assert "--option 'x' must be KEY=VALUE" in capsys.readouterr().err


def test_importing_evalharness_is_light_and_exports_the_api_lazily() -> None:
    script = (
        "import sys, evalharness\n"
        "heavy = [m for m in ('pandas', 'mujoco', 'jax', 'torch', 'evalharness.api') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from evalharness import EvalResult, evaluate\n"
        "import evalharness.api as api\n"
        "assert evaluate is api.evaluate and EvalResult is api.EvalResult\n"
        "assert callable(evalharness.finetune)\n"
        "import evalharness.finetune\n"
        "assert callable(evalharness.finetune) and evalharness.finetune.FinetuneConfig\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_finetune_module_called_is_the_api_finetune(monkeypatch: pytest.MonkeyPatch) -> None:
    import evalharness
    import evalharness.api

    calls = []
    monkeypatch.setattr(evalharness.api, "finetune", lambda *a, **k: calls.append((a, k)))
    evalharness.finetune("octo_jax:/ckpt", "demos/", "out/", steps=3)
    assert calls == [(("octo_jax:/ckpt", "demos/", "out/"), {"steps": 3})]


@pytest.mark.sim
@pytest.mark.slow
def test_evaluate_returns_the_table_the_cli_writes(tmp_path) -> None:
    import pandas as pd

    import evalharness
    from evalharness.results import TIMING_COLUMNS, format_table, read_episodes, read_summary

    cli_dir = tmp_path / "cli"
    argv = ["run", "--suite", "libero_spatial", "--policy", "scripted", "--tasks", "0"]
    assert main([*argv, "--episodes-per-task", "2", "--num-envs", "1", "--out", str(cli_dir)]) == 0

    result = evalharness.evaluate(
        "scripted",
        "libero_spatial",
        tasks=[0],
        episodes_per_task=2,
        num_envs=1,
        out=tmp_path / "api",
        progress=False,
    )
    assert isinstance(result, evalharness.EvalResult)
    assert result.run_dir == tmp_path / "api"
    assert result.policy == "scripted"
    pd.testing.assert_frame_equal(result.summary, read_summary(cli_dir / "summary.csv"))
    assert result.table() == format_table(read_summary(cli_dir / "summary.csv"))
    pd.testing.assert_frame_equal(
        result.episodes.drop(columns=list(TIMING_COLUMNS)),
        read_episodes(cli_dir / "episodes.csv").drop(columns=list(TIMING_COLUMNS)),
    )
    assert list(result.summary["level"]) == ["task", "suite"]
    assert list(result.summary["episodes"]) == [2, 2]
    assert result.success_rate == result.summary["success_rate"].iloc[1]
    cli_run = json.loads((cli_dir / "run.json").read_text())
    assert result.identity_hash == cli_run["identity_hash"]
    assert result.identity == cli_run["identity"]
    assert result.run["status"] == "finished"
