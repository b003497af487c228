"""A minimal server of evalharness's batched protocol, for the remote family's contract example.

It speaks what `EvalharnessSession` expects (openpi's handshake: a metadata dict with the
``__evalharness__`` entry first, then one ``act`` request per batch, answered with
``{"actions": (B, H, A)}``) for one in-process policy, one request at a time, with none of
`evalharness serve`'s batching across clients, tokens, limits or health endpoint. It lives in
the family's folder so that the family's example needs nothing above `policies/`; real
evaluations use `evalharness serve`.

    >>> server = MiniServer(load_policy("zero"))  # doctest: +SKIP
    >>> policy = load_policy(f"remote:ws://127.0.0.1:{server.port}")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

from evalharness.policies.base import Policy
from evalharness.policies.remote import codec
from evalharness.policies.remote.client import EVALHARNESS_KEY, EVALHARNESS_PROTOCOL_VERSION


def served_metadata(policy: Policy, name: str) -> dict[str, Any]:
    """The handshake an evalharness server sends first: the policy's name, checkpoint, spec."""
    spec = dataclasses.asdict(policy.spec)
    spec["dataset_statistics"] = None
    spec["image_sizes"] = {k: list(v) for k, v in policy.spec.image_sizes.items()}
    return {
        "policy": name,
        "action_horizon": policy.spec.action_horizon,
        EVALHARNESS_KEY: {
            "protocol_version": EVALHARNESS_PROTOCOL_VERSION,
            "policy": name,
            "checkpoint": policy.checkpoint,
            "spec": json.loads(json.dumps(spec, default=str)),
        },
    }


class MiniServer:
    """Serves `policy` on 127.0.0.1 (a free port: `port`) from a daemon thread."""

    def __init__(self, policy: Policy, name: str = "") -> None:
        from websockets.sync.server import serve

        self.policy = policy
        self.metadata = served_metadata(policy, name or policy.spec.name)
        # One act() at a time: a policy object is not assumed to be thread-safe.
        self._lock = threading.Lock()
        self._server = serve(self._handler, "127.0.0.1", 0)
        self.port: int = self._server.socket.getsockname()[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handler(self, ws: Any) -> None:
        ws.send(codec.pack(self.metadata))
        for data in ws:
            message = codec.unpack(data)
            if not isinstance(message, dict) or message.get(EVALHARNESS_KEY) != "act":
                ws.send("error: expected an evalharness act request")
                continue
            tasks = dict(message["tasks"])
            tasks["language_instruction"] = [str(t) for t in tasks["language_instruction"]]
            with self._lock:
                actions = self.policy.act(message["obs"], tasks)
            ws.send(codec.pack({"actions": actions}))

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()
