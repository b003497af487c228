"""The ``remote`` family: a model behind a policy server (openpi, vla-eval, evalharness serve)."""

from __future__ import annotations

from pathlib import Path

from evalharness.policies.examples import PolicyExample
from evalharness.policies.registry import NO_OP_POLICY, PolicyFamily
from evalharness.policies.remote.policy import RemoteOptions

#: what the example server serves: chunked, no model to load. Deterministic, because the
#: episode streams of a stochastic policy live in the server's process, not in the client
#: (tests/test_serve.py checks a served Octo's sampling against the in-process one).
SERVED = f"{NO_OP_POLICY}?action_horizon=4&exec_horizon=2"
_PORT: list[int] = []


def example(fixtures: Path) -> PolicyExample:
    """The no-op policy served by an in-process `evalharness serve` on a free port (started once,
    on a daemon thread), reached through ``remote:``."""
    if not _PORT:
        from evalharness.policies.registry import load_policy
        from evalharness.serve import PolicyServer, ServeConfig

        server = PolicyServer(ServeConfig(policy=SERVED, port=0), load_policy(SERVED))
        _PORT.append(server.start())
    return PolicyExample(
        f"remote:ws://127.0.0.1:{_PORT[0]}", model="no-op policy via evalharness serve"
    )


FAMILIES = (
    PolicyFamily(
        name="remote",
        summary="a model behind a WebSocket policy server (evalharness serve, openpi, vla-eval)",
        policy="evalharness.policies.remote.policy:make_remote_policy",
        options=RemoteOptions,
        usage="remote:ws://127.0.0.1:8000?protocol=openpi",
        extra="remote",
        requires=("websockets", "msgpack"),
        example=example,
    ),
)
