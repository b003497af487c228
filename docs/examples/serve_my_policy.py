"""Serve any Python policy to `evalharness run`, openpi clients and vla-eval bridges.

    python docs/examples/serve_my_policy.py --port 8000
    evalharness run --suite libero_spatial --policy remote:ws://127.0.0.1:8000 --tasks 0

Replace `MyPolicy.act` with your model. It runs in *this* process and environment (your torch,
your JAX); evalharness only needs `pip install evalharness[remote]` here.
"""

from __future__ import annotations

import argparse

import numpy as np

from evalharness.policies import Policy, PolicySpec
from evalharness.serve import ServeConfig, serve


class MyPolicy(Policy):
    """Holds still and opens the gripper; a real policy runs its network in `act`."""

    def __init__(self) -> None:
        # What the env must give it: window 1, 128² frames, chunks of 8 actions (4 executed).
        self.spec = PolicySpec(
            name="my_policy",
            action_horizon=8,
            exec_horizon=4,
            needs_language=True,
            image_sizes={"image_primary": (128, 128), "image_wrist": (128, 128)},
        )

    def act(self, obs, tasks):
        # obs["image_primary"]: (B, window, 128, 128, 3) uint8, upright; obs["proprio"]: (B, window, 8)
        # tasks["language_instruction"]: B strings; tasks["episode_seed"]: (B,) for sampling.
        batch = len(tasks["language_instruction"])
        actions = np.zeros((batch, self.spec.action_horizon, self.spec.action_dim))
        actions[..., -1] = -1.0  # LIBERO gripper: -1 open, +1 closed
        return actions


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    serve(ServeConfig(policy="my_policy", port=args.port, max_batch=args.max_batch), MyPolicy())
