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
    """The no-op policy served by the family's `MiniServer` (evalharness's batched protocol) on
    a free port (started once, on a daemon thread), reached through ``remote:``; the family
    imports nothing above `policies/` (`evalharness serve` is tested in tests/test_serve.py)."""
    if not _PORT:
        from evalharness.policies.registry import load_policy
        from evalharness.policies.remote.mini_server import MiniServer

        _PORT.append(MiniServer(load_policy(SERVED), SERVED).port)
    return PolicyExample(
        f"remote:ws://127.0.0.1:{_PORT[0]}", model="no-op policy via the family's MiniServer"
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
