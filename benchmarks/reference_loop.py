"""A sequential reference evaluation, the way OpenVLA's `run_libero_eval.py` does it.

One env, built once per task; per episode `env.reset()`, `set_init_state`, the warm-up
no-ops, then one policy call per control step for a batch of one, executing the first action
of the returned chunk; robosuite renders both cameras on every step (warm-up included). The
observation a policy sees is the harness' standard one (upright frames, 8-d proprio, a
history window padded at the start), so the same policy object runs here and in the harness.

    python benchmarks/reference_loop.py --policy NAME --tasks 0 --episodes 2 --max-steps 40
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from typing import Any

import numpy as np

from evalharness.policies.registry import NO_OP_POLICY


def reference_eval(
    policy: Any,
    suite: str,
    task_ids: tuple[int, ...],
    episodes_per_task: int,
    max_steps: int,
    num_steps_wait: int,
    wait_action: tuple[float, ...],
    camera_size: int,
    seed: int,
) -> dict[str, Any]:
    """Run the slice sequentially; wall time, env steps, policy calls and per-episode results."""
    from libero.libero.envs import OffScreenRenderEnv

    from evalharness.envs.libero import get_task, init_states, upright
    from evalharness.envs.rotations import quat2axisangle
    from evalharness.runner import policy_seed

    spec = policy.spec
    window = spec.window_size
    results = []
    env_steps = calls = 0
    t0 = time.perf_counter()
    for task_id in task_ids:
        task = get_task(suite, task_id)
        states = init_states(suite, task_id)
        env = OffScreenRenderEnv(
            bddl_file_name=task.bddl_file,
            camera_heights=camera_size,
            camera_widths=camera_size,
            hard_reset=False,
            ignore_done=True,
            horizon=num_steps_wait + max_steps + 1,
        )
        for i in range(episodes_per_task):
            env.seed(seed + i)
            env.reset()
            raw = env.set_init_state(states[i % len(states)])
            history: deque[dict[str, np.ndarray]] = deque(maxlen=window)
            success, steps, real = False, 0, 0
            p_seed = policy_seed(seed, task_id, i)
            for t in range(num_steps_wait + max_steps):
                if t < num_steps_wait:
                    raw, _, _, _ = env.step(np.asarray(wait_action))
                    continue
                frame = {
                    "image_primary": upright(np.asarray(raw["agentview_image"])),
                    "image_wrist": upright(np.asarray(raw["robot0_eye_in_hand_image"])),
                    "proprio": np.concatenate(
                        [
                            raw["robot0_eef_pos"],
                            quat2axisangle(np.asarray(raw["robot0_eef_quat"])),
                            raw["robot0_gripper_qpos"],
                        ]
                    ).astype(np.float32),
                }
                history.append(frame)
                real = min(real + 1, window)
                while len(history) < window:
                    history.appendleft(history[0])
                obs = {k: np.stack([h[k] for h in history])[None] for k in frame}
                obs["timestep_pad_mask"] = (np.arange(window) >= window - real)[None]
                tasks = {
                    "language_instruction": [task.instruction],
                    "episode_seed": np.array([p_seed], dtype=np.int64),
                    "episode_start": np.array([steps == 0]),
                }
                action = np.asarray(policy.act(obs, tasks))[0, 0]
                calls += 1
                raw, _, done, _ = env.step(action)
                steps += 1
                if done:
                    success = True
                    break
            env_steps += steps
            results.append({"task_id": task_id, "episode_index": i, "success": success})
        env.close()
    wall = time.perf_counter() - t0
    return {
        "wall_seconds": wall,
        "env_steps": env_steps,
        "policy_calls": calls,
        "env_steps_per_s": env_steps / wall,
        "episodes": results,
    }


def main() -> None:
    from evalharness.policies import load_policy
    from evalharness.protocols import get_protocol

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=NO_OP_POLICY)
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--tasks", default="0")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--camera-size", type=int, default=128)
    args = parser.parse_args()
    protocol = get_protocol("openvla")
    out = reference_eval(
        load_policy(args.policy),
        args.suite,
        tuple(int(t) for t in args.tasks.split(",")),
        args.episodes,
        args.max_steps,
        protocol.num_steps_wait,
        tuple(protocol.wait_action),
        args.camera_size,
        protocol.seed,
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
