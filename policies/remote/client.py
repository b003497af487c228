"""WebSocket sessions with a policy server, one class per wire protocol.

- `OpenpiSession` speaks openpi's protocol (Physical-Intelligence/openpi
  ``packages/openpi-client/src/openpi_client/websocket_client_policy.py`` and
  ``src/openpi/serving/websocket_policy_server.py``): the server sends its metadata first;
  then each binary request is one packed observation and each reply one packed dict with
  ``actions`` (H, D); a text frame is the server's error (a traceback). Newer servers also
  take ``{"__ctrl__": "episode_start" | "episode_end", ...}`` and reply ``{"__ack__": ...}``.
- `VlaEvalSession` speaks vla-eval's (allenai/vla-evaluation-harness
  ``src/vla_eval/connection.py``, ``protocol/messages.py``, ``model_servers/serve.py``):
  every frame is ``{"type", "payload", "seq", "timestamp"}``; the client opens with HELLO and
  the server answers HELLO with its description; ``episode_start``/``episode_end`` carry no
  reply; an ``observation`` is answered by an ``action`` (or ``error``) with the same seq.
- `EvalharnessSession` speaks evalharness's batched protocol, openpi's extended (served by
  ``evalharness serve``, see evalharness.serve): the same first message, whose
  ``evalharness`` entry describes the served policy, and requests
  ``{"__evalharness__": "act", "obs": {...}, "tasks": {...}}`` holding a whole batch.

Connecting retries refused or failed connections with exponential backoff, then raises a
`RemoteError` that names the URL and the cause; a token travels as openpi's
``Authorization: Api-Key <token>`` header.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalharness.errors import EvalharnessError
from evalharness.policies.remote import codec

#: environment variable holding the shared token sent to (and checked by) servers.
TOKEN_ENV = "EVALHARNESS_TOKEN"
#: the key of evalharness's entry in the server metadata and of its batched requests.
EVALHARNESS_KEY = "__evalharness__"
#: version of the batched protocol; a server with another major version is refused.
EVALHARNESS_PROTOCOL_VERSION = 1


class RemoteError(EvalharnessError, RuntimeError):
    """A policy server could not be reached, refused a request, or answered out of protocol."""


class RemoteTimeout(RemoteError):
    """A request got no reply within its timeout."""


@dataclass(frozen=True)
class Endpoint:
    """Where a server is and how patient to be with it."""

    url: str
    token: str | None = None
    #: seconds to wait for one reply (and for a connection to open).
    timeout: float = 60.0
    #: connection attempts after the first one fails; waits 0.5 s, 1 s, 2 s, ... between.
    retries: int = 4
    max_message_bytes: int = codec.MAX_MESSAGE_BYTES

    def delays(self) -> list[float]:
        return [0.5 * 2**i for i in range(self.retries)]


def _import_websockets() -> Any:
    try:
        import websockets.sync.client
    except ImportError as exc:
        raise RemoteError(
            "remote policies need the websockets package: pip install 'evalharness[remote]'"
        ) from exc
    return websockets


def open_connection(endpoint: Endpoint, sleep: Callable[[float], None] = time.sleep) -> Any:
    """A websockets sync connection to ``endpoint.url``, retried with backoff.

    A refused token (HTTP 401/403) is not retried: it will not change.
    """
    websockets = _import_websockets()
    headers = {"Authorization": f"Api-Key {endpoint.token}"} if endpoint.token else None
    delays = endpoint.delays()
    for attempt in range(len(delays) + 1):
        try:
            return websockets.sync.client.connect(
                endpoint.url,
                additional_headers=headers,
                compression=None,
                max_size=endpoint.max_message_bytes,
                open_timeout=endpoint.timeout,
                # Inference (a JIT compile) may hold a server's event loop longer than a ping.
                ping_interval=None,
                proxy=None,
            )
        except websockets.exceptions.InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise RemoteError(
                    f"policy server {endpoint.url} refused the connection (HTTP {status}): "
                    f"wrong or missing token; set {TOKEN_ENV} to the server's --token"
                ) from None
            cause: BaseException = exc
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            cause = exc
        if attempt < len(delays):
            sleep(delays[attempt])
    raise RemoteError(
        f"cannot connect to policy server {endpoint.url} after {len(delays) + 1} attempts: "
        f"{type(cause).__name__}: {cause}"
    ) from cause


class _Session:
    """One WebSocket connection: send, receive with a timeout, errors named."""

    flavour = codec.OPENPI

    def __init__(self, endpoint: Endpoint, connection: Any | None = None) -> None:
        self.endpoint = endpoint
        self.conn = connection if connection is not None else open_connection(endpoint)
        self.closed = False

    def send(self, message: Any) -> None:
        data = codec.pack(message, self.flavour, self.endpoint.max_message_bytes)
        try:
            self.conn.send(data)
        except Exception as exc:
            self.closed = True
            raise self._lost(exc) from exc

    def recv_raw(self, what: str) -> Any:
        try:
            data = self.conn.recv(timeout=self.endpoint.timeout)
        except TimeoutError:
            self.close()
            raise RemoteTimeout(
                f"policy server {self.endpoint.url} sent no reply to {what} within "
                f"{self.endpoint.timeout:g} s (option timeout=)"
            ) from None
        except Exception as exc:
            self.closed = True
            raise self._lost(exc) from exc
        return data

    def recv(self, what: str) -> Any:
        data = self.recv_raw(what)
        if isinstance(data, str):
            raise RemoteError(f"policy server {self.endpoint.url} failed on {what}:\n{data}")
        try:
            return codec.unpack(data, self.endpoint.max_message_bytes)
        except codec.CodecError as exc:
            raise RemoteError(f"policy server {self.endpoint.url}: reply to {what}: {exc}") from exc

    def _lost(self, exc: BaseException) -> RemoteError:
        rcvd = getattr(exc, "rcvd", None)
        if rcvd is not None and rcvd.code == 1009:
            return RemoteError(
                f"policy server {self.endpoint.url} refused a message over its size limit "
                f"(close code 1009: {rcvd.reason or 'message too big'}); raise the server's "
                "--max-message-mb or send smaller batches (--num-envs)"
            )
        if rcvd is not None:
            detail = f"close code {rcvd.code}{': ' + rcvd.reason if rcvd.reason else ''}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return RemoteError(f"lost the connection to policy server {self.endpoint.url} ({detail})")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # Closing a connection that already broke may raise; there is nothing left to do.
            with contextlib.suppress(Exception):
                self.conn.close()


class OpenpiSession(_Session):
    """openpi: metadata first, then one observation per request."""

    def __init__(self, endpoint: Endpoint, connection: Any | None = None) -> None:
        super().__init__(endpoint, connection)
        metadata = self.recv("the connection (the server's metadata)")
        if not isinstance(metadata, dict):
            raise RemoteError(
                f"policy server {endpoint.url} sent {type(metadata).__name__} as its metadata; "
                "an openpi server sends a dict first"
            )
        self.metadata: dict[str, Any] = metadata

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        self.send(dict(obs))
        reply = self.recv("an observation")
        if not isinstance(reply, dict) or "actions" not in reply:
            keys = sorted(reply) if isinstance(reply, dict) else type(reply).__name__
            raise RemoteError(
                f"policy server {self.endpoint.url} replied {keys} to an observation; "
                "expected a dict with 'actions'"
            )
        return reply

    def control(self, message: Mapping[str, Any]) -> Any:
        """Send an ``__ctrl__`` message (episode start/end) and read its acknowledgement."""
        self.send(dict(message))
        return self.recv(f"control message {message.get('__ctrl__')!r}")


class EvalharnessSession(OpenpiSession):
    """evalharness's batched protocol: openpi's handshake, then whole batches per request."""

    def __init__(self, endpoint: Endpoint, connection: Any | None = None) -> None:
        super().__init__(endpoint, connection)
        info = self.metadata.get(EVALHARNESS_KEY)
        if not isinstance(info, dict):
            raise RemoteError(
                f"policy server {endpoint.url} speaks openpi without evalharness's batched "
                "protocol (its metadata has no evalharness entry); use "
                f"'remote:{endpoint.url}?protocol=openpi'"
            )
        version = info.get("protocol_version")
        if version != EVALHARNESS_PROTOCOL_VERSION:
            raise RemoteError(
                f"policy server {endpoint.url} speaks evalharness protocol version {version!r}; "
                f"this client speaks {EVALHARNESS_PROTOCOL_VERSION}: update one of them"
            )
        self.info: dict[str, Any] = info

    def act(self, obs: Mapping[str, Any], tasks: Mapping[str, Any]) -> np.ndarray:
        self.send({EVALHARNESS_KEY: "act", "obs": dict(obs), "tasks": dict(tasks)})
        reply = self.recv("a batch of observations")
        actions = reply.get("actions") if isinstance(reply, dict) else None
        if not isinstance(actions, np.ndarray):
            raise RemoteError(
                f"policy server {self.endpoint.url} replied without an 'actions' array"
            )
        return actions


class VlaEvalSession(_Session):
    """vla-eval: HELLO exchange, typed envelopes with sequence numbers."""

    flavour = codec.VLAEVAL

    def __init__(self, endpoint: Endpoint, connection: Any | None = None) -> None:
        super().__init__(endpoint, connection)
        self.seq = 0
        from evalharness import __version__

        self._send(
            "hello", {"harness_version": f"evalharness {__version__}", "protocol_version": 1}
        )
        reply = self._recv("HELLO")
        if reply["type"] != "hello":
            raise RemoteError(
                f"vla-eval server {endpoint.url} answered HELLO with {reply['type']!r}"
            )
        self.hello: dict[str, Any] = dict(reply.get("payload") or {})

    def _send(self, kind: str, payload: Mapping[str, Any]) -> int:
        self.seq += 1
        self.send(
            {"type": kind, "payload": dict(payload), "seq": self.seq, "timestamp": time.time()}
        )
        return self.seq

    def _recv(self, what: str) -> dict[str, Any]:
        message = self.recv(what)
        if not isinstance(message, dict) or not {"type", "payload"} <= set(message):
            raise RemoteError(
                f"vla-eval server {self.endpoint.url} sent a frame without type/payload "
                f"in reply to {what}"
            )
        return message

    def episode_start(self, payload: Mapping[str, Any]) -> None:
        self._send("episode_start", payload)

    def episode_end(self, payload: Mapping[str, Any]) -> None:
        self._send("episode_end", payload)

    def act(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        seq = self._send("observation", obs)
        while True:
            reply = self._recv("an observation")
            if reply["type"] == "error":
                raise RemoteError(
                    f"vla-eval server {self.endpoint.url} failed on an observation: "
                    f"{reply['payload']}"
                )
            # An error to an episode_start (sent without waiting) arrives before our action.
            if reply["type"] == "action" and reply.get("seq") == seq:
                payload = reply["payload"]
                if not isinstance(payload, dict):
                    raise RemoteError(f"vla-eval server {self.endpoint.url}: action not a dict")
                return payload
