"""Spec tests for evalharness.protocols: the presets carry the published numbers.

Reference values: ../shared/facts/LIBERO_EVAL.md sections 1.4 (LIBERO `lifelong/metric.py`),
2.1 (OpenVLA `run_libero_eval.py`), 2.6 (openpi `examples/libero/main.py`), 3.1-3.4 (LeRobot
`envs/libero.py`, `EvalConfig`) and 8 (how each seeds its scenes).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from evalharness.envs.libero import SUITES
from evalharness.protocols import PROTOCOLS, SEMANTICS_KEYS, Protocol, get_protocol

GRIPPER_OPEN_NOOP = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
ZERO_ACTION = (0.0,) * 7


def test_the_presets_are_openvla_openpi_libero_and_lerobot():
    assert sorted(PROTOCOLS) == ["lerobot", "libero", "openpi", "openvla"]
    for name, protocol in PROTOCOLS.items():
        assert protocol.name == name
        assert protocol.overrides == ()
        assert set(protocol.max_steps) == set(SUITES)


@pytest.mark.parametrize("name", ["openvla", "openpi", "libero", "lerobot"])
def test_each_preset_states_every_env_semantic_of_its_reference(name):
    semantics = get_protocol(name).semantics
    assert list(semantics) == list(SEMANTICS_KEYS)
    assert all(len(text) > 20 for text in semantics.values())


# The published settings, written out here rather than derived from the module under test.
OPENVLA_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
PUBLISHED = {
    # openvla experiments/robot/libero/run_libero_eval.py; libero_utils.py env.seed(0)
    "openvla": (50, OPENVLA_STEPS, 10, GRIPPER_OPEN_NOOP, 256, 7, "task_stream", 0),
    # openpi examples/libero/main.py: seed 7, env.seed(args.seed)
    "openpi": (50, OPENVLA_STEPS, 10, GRIPPER_OPEN_NOOP, 256, 7, "task_stream", 7),
    # LIBERO libero/lifelong/metric.py + configs/eval/default.yaml (no env seed upstream)
    "libero": (20, dict.fromkeys(SUITES, 600), 5, ZERO_ACTION, 128, 10000, "per_episode", 10000),
    # lerobot src/lerobot/envs/libero.py TASK_SUITE_MAX_STEPS, envs/configs.py, EvalConfig;
    # lerobot_eval.py seeds every reset with start_seed + episode
    "lerobot": (
        50,
        {**OPENVLA_STEPS, "libero_spatial": 280},
        10,
        GRIPPER_OPEN_NOOP,
        360,
        1000,
        "per_episode",
        1000,
    ),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_matches_the_published_harness(name):
    p = get_protocol(name)
    episodes, steps, wait, wait_action, camera, seed, seeding, env_seed = PUBLISHED[name]
    assert p.episodes_per_task == episodes
    assert dict(p.max_steps) == steps
    assert p.num_steps_wait == wait
    assert p.wait_action == wait_action
    assert p.camera_size == camera
    assert p.seed == seed
    assert p.seeding == seeding
    assert p.resolved_env_seed == env_seed


def test_a_task_stream_gives_every_episode_the_stream_seed_and_per_episode_its_own():
    assert [get_protocol("openvla").episode_env_seed(i) for i in (0, 1, 49)] == [0, 0, 0]
    assert [get_protocol("openpi").episode_env_seed(i) for i in (0, 1, 49)] == [7, 7, 7]
    assert [get_protocol("lerobot").episode_env_seed(i) for i in (0, 1, 49)] == [1000, 1001, 1049]
    # --seed moves a per-episode preset's env seeds, but not OpenVLA's scenes (env.seed(0)).
    assert get_protocol("lerobot").with_overrides(seed=3).episode_env_seed(2) == 5
    assert get_protocol("openvla").with_overrides(seed=3).episode_env_seed(2) == 0
    # OpenVLA's scenes under evalharness's former seeding: per episode, 7 + i.
    legacy = get_protocol("openvla").with_overrides(seeding="per_episode", env_seed=7)
    assert [legacy.episode_env_seed(i) for i in (0, 1, 49)] == [7, 8, 56]
    assert legacy.overrides == ("env_seed", "seeding")


def test_an_unknown_seeding_is_refused_naming_the_known_ones():
    with pytest.raises(
        ValueError,
        match="protocol openvla: seeding must be one of task_stream, per_episode, got 'shared'",
    ):
        get_protocol("openvla").with_overrides(seeding="shared")


@pytest.mark.parametrize(
    ("name", "suite", "steps"),
    [
        ("openvla", "libero_spatial", 220),
        ("openvla", "libero_10", 520),
        ("lerobot", "libero_spatial", 280),
        ("libero", "libero_90", 600),
    ],
)
def test_max_steps_for_gives_the_suite_limit(name, suite, steps):
    assert get_protocol(name).max_steps_for(suite) == steps


def test_max_steps_for_an_unknown_suite_names_the_known_ones():
    with pytest.raises(ValueError, match="no step limit for suite 'libero_100'") as excinfo:
        get_protocol("openvla").max_steps_for("libero_100")
    for suite in SUITES:
        assert suite in str(excinfo.value)


def test_unknown_protocol_error_lists_the_presets():
    with pytest.raises(
        ValueError,
        match="unknown protocol 'octo'; known protocols: openvla, openpi, libero, lerobot",
    ):
        get_protocol("octo")


def test_an_int_max_steps_override_applies_to_every_suite_and_is_recorded():
    p = get_protocol("openvla").with_overrides(max_steps=40)
    assert dict(p.max_steps) == dict.fromkeys(SUITES, 40)
    assert p.overrides == ("max_steps",)
    assert p.name == "openvla"
    assert p.episodes_per_task == 50
    # The preset itself is untouched.
    assert get_protocol("openvla").max_steps_for("libero_spatial") == 220
    assert get_protocol("openvla").overrides == ()


def test_overrides_replace_fields_and_accumulate_sorted():
    p = get_protocol("libero").with_overrides(episodes_per_task=3, seed=1)
    p = p.with_overrides(camera_size=64, wait_action=[0, 0, 0, 0, 0, 0, -1])
    assert (p.episodes_per_task, p.seed, p.camera_size) == (3, 1, 64)
    assert p.wait_action == GRIPPER_OPEN_NOOP
    assert isinstance(p.wait_action, tuple)
    assert p.overrides == ("camera_size", "episodes_per_task", "seed", "wait_action")


def test_none_overrides_are_ignored():
    preset = get_protocol("lerobot")
    assert preset.with_overrides(max_steps=None, seed=None) is preset
    p = preset.with_overrides(max_steps=None, seed=5)
    assert p.seed == 5
    assert p.max_steps == preset.max_steps
    assert p.overrides == ("seed",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"episodes_per_task": 0}, "episodes_per_task must be >= 1, got 0"),
        ({"wait_action": (0.0,) * 6}, r"wait_action must have 7 values, got \[0\.0(, 0\.0){5}\]"),
        ({"max_steps": 0}, r"max_steps\[libero_spatial\] must be >= 1, got 0"),
        ({"num_steps_wait": -1}, "num_steps_wait must be >= 0, got -1"),
        ({"camera_size": 4}, "camera_size must be >= 8, got 4"),
    ],
)
def test_invalid_override_values_are_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=rf"protocol openvla: {message}"):
        get_protocol("openvla").with_overrides(**changes)


@pytest.mark.parametrize("field", ["speed", "name", "source", "overrides", "semantics"])
def test_unknown_or_fixed_fields_cannot_be_overridden(field):
    with pytest.raises(ValueError, match=rf"unknown protocol field\(s\) \['{field}'\]; known: "):
        get_protocol("openvla").with_overrides(**{field: 1})


def test_to_dict_round_trips_through_json():
    p = get_protocol("openvla").with_overrides(max_steps=40, seed=3)
    data = p.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "name": "openvla",
        "episodes_per_task": 50,
        "max_steps": dict.fromkeys(SUITES, 40),
        "num_steps_wait": 10,
        "wait_action": list(GRIPPER_OPEN_NOOP),
        "camera_size": 256,
        "seed": 3,
        "seeding": "task_stream",
        "env_seed": 0,
        "source": p.source,
        "notes": p.notes,
        "semantics": dict(p.semantics),
        "overrides": ["max_steps", "seed"],
    }
    loaded = json.loads(json.dumps(data))
    rebuilt = Protocol(
        **{
            **loaded,
            "wait_action": tuple(loaded["wait_action"]),
            "overrides": tuple(loaded["overrides"]),
        }
    )
    assert rebuilt == p


def test_protocols_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_protocol("openvla").seed = 1  # type: ignore[misc]
