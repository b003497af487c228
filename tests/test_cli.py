"""The `evalharness` command line: help everywhere, listings, and errors that teach."""

from __future__ import annotations

import pytest

from evalharness.cli import COMMANDS, main


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_subcommand_has_help(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: evalharness" in out
    if command == "run":
        for flag in (
            "--suite",
            "--policy",
            "--tasks",
            "--episodes-per-task",
            "--seed",
            "--max-steps",
            "--protocol",
            "--out",
            "--video",
            "--resume",
            "--num-envs",
        ):
            assert flag in out  # fmt: skip


def test_suites_lists_tasks_with_instruction_init_states_and_step_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["suites", "--suite", "libero_spatial"]) == 0
    out = capsys.readouterr().out
    assert "libero_spatial: 10 tasks, step limit 220 (protocol openvla)" in out
    line = next(x for x in out.splitlines() if "on the ramekin and place it on the plate" in x)
    assert line.split()[:3] == ["5", "50", "220"]
    assert "[pick_up_the_black_bowl_on_the_ramekin_and_place_it_on_the_plate]" in line


def test_suites_step_limit_follows_the_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suites", "--suite", "libero_10", "--protocol", "libero"]) == 0
    assert "libero_10: 10 tasks, step limit 600 (protocol libero)" in capsys.readouterr().out


def test_protocols_lists_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    assert "openvla" in out and "220/280/300/520/400" in out and "lerobot" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--suite", "libero_nope", "--policy", "zero"], "known suites: libero_spatial"),
        (["run", "--suite", "libero_spatial", "--policy", "nope"], "unknown policy 'nope'"),
        (["run", "--suite", "libero_spatial", "--policy", "zero?x"], "malformed options"),
        (["run", "--suite", "libero_spatial", "--policy", "zero", "--tasks", "12"], "0..9"),
        (["run", "--suite", "libero_spatial", "--policy", "zero", "--protocol", "x"], "openvla"),
        (["run", "--suite", "libero_spatial", "--policy", "zero", "--wait-action", "0,1"], "7"),
        (
            ["run", "--suite", "libero_spatial", "--policy", "zero", "--episodes-per-task", "0"],
            "episodes_per_task",
        ),
        (
            ["run", "--suite", "libero_spatial", "--policy", "zero", "--envs-per-worker", "0"],
            "--envs-per-worker must be >= 1, got 0",
        ),
        (
            [
                *("run", "--suite", "libero_spatial", "--policy", "zero"),
                *("--executor", "ray", "--envs-per-worker", "2"),
            ],
            "Ray actors take ray_envs_per_worker (--ray-envs-per-worker)",
        ),
    ],
)
def test_bad_input_exits_2_with_a_message_that_names_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    argv = [*argv, "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_a_user_error_prints_one_line_without_traceback_and_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    argv = ["run", "--suite", "libero_spatial", "--policy", "zero", "--tasks", "a-b"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: bad task list 'a-b': 'a-b' is not an id or a range like 5-7\n")


@pytest.mark.parametrize("bug", [KeyError("boom"), ValueError("boom")])
def test_a_bug_prints_its_traceback_and_exits_1(
    bug: Exception, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ValueError is a bug too: only EvalharnessError subclasses are the user's to fix.
    def protocols(args: object) -> int:
        raise bug

    monkeypatch.setitem(COMMANDS, "protocols", protocols)
    assert main(["protocols"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert f"{type(bug).__name__}: {bug}\n" in err
    assert err.endswith(
        f"evalharness protocols: this is a bug (an unexpected {type(bug).__name__}); please "
        "report it with the traceback above\n"
    )
