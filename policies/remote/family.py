"""The ``remote`` family: a model behind a policy server (openpi, vla-eval, evalharness serve)."""

from __future__ import annotations

from evalharness.policies.registry import PolicyFamily
from evalharness.policies.remote.policy import RemoteOptions

FAMILIES = (
    PolicyFamily(
        name="remote",
        summary="a model behind a WebSocket policy server (evalharness serve, openpi, vla-eval)",
        policy="evalharness.policies.remote.policy:make_remote_policy",
        options=RemoteOptions,
        usage="remote:ws://127.0.0.1:8000?protocol=openpi",
        extra="remote",
        requires=("websockets", "msgpack"),
    ),
)
