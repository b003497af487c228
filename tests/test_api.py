"""The Python API (`evalharness.evaluate`, `evalharness.finetune`), `python -m evalharness`
and `run --option`."""

from __future__ import annotations

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
    # The options build the policy before any env starts: its spec refuses the pair.
    argv = ["run", "--suite", "libero_spatial", "--policy", "zero?exec_horizon=1"]
    argv += ["--option", "action_horizon=4", "--option", "exec_horizon=9"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "PolicySpec.exec_horizon must be in 1..action_horizon (4), got 9" in err
    assert main(["run", "--suite", "libero_spatial", "--policy", "zero", "--option", "x"]) == 2
    assert "--option 'x' must be KEY=VALUE" in capsys.readouterr().err
