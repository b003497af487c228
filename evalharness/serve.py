"""`evalharness serve --policy SPEC`: any registered policy behind a WebSocket policy server.

One port speaks two protocols (see `evalharness.policies.remote.client`):

- **openpi's**, so openpi's own clients (its LIBERO example, ``openpi-client``'s
  ``WebsocketClientPolicy``) and the model bridges built on it can evaluate an evalharness
  policy: the server's first message is its metadata; each request is one observation under
  openpi's LIBERO keys (``observation/image``, ``observation/wrist_image``,
  ``observation/state``, ``prompt``) and is answered with ``{"actions": (H, 7)}``;
  ``{"__ctrl__": "episode_start" | "episode_end"}`` messages are acknowledged. The server
  keeps each connection's history window, resizes frames to the policy's sizes and gives each
  episode a seed of its own (a new episode starts at ``episode_start``, or when the prompt
  changes on a connection that sends no control messages).
- **evalharness's batched protocol** (``remote:ws://HOST:PORT``): the same metadata, with an
  ``evalharness`` entry holding the policy's spec, and requests that carry a whole batch of
  windowed observations with their episode seeds, so results equal in-process evaluation.

Requests from concurrent connections are gathered for up to ``--batch-wait-ms`` into one
`act()` of at most ``--max-batch`` rows (a single batched request is never split; two rows
of the same episode seed never share a call). ``GET /health`` (and openpi's ``/healthz``)
answers 200 with the policy's name once it is loaded.

Safety: binds 127.0.0.1 unless ``--host`` says otherwise (and warns when it is reachable from
other machines); ``--token`` (or ``EVALHARNESS_TOKEN``) makes every WebSocket connection show
``Authorization: Api-Key <token>`` (HTTP 401 otherwise); messages over ``--max-message-mb``
close the connection (code 1009); arrays of object, void, complex or string dtype and msgpack
extension types are refused (code 1003) before anything is built from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np

from evalharness import __version__
from evalharness.batching import pad_batch, padded_size
from evalharness.errors import EvalharnessError
from evalharness.identity import checkpoint_identity
from evalharness.policies.base import EpisodeStreams, Policy, PolicyOutputError, check_actions
from evalharness.policies.registry import load_policy, parse_policy_string
from evalharness.policies.remote import codec
from evalharness.policies.remote.client import (
    EVALHARNESS_KEY,
    EVALHARNESS_PROTOCOL_VERSION,
    TOKEN_ENV,
)
from evalharness.policies.remote.keymap import DEFAULT_KEYS

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: openpi's LIBERO wire keys, read back into standard keys.
OPENPI_KEYS = {wire: standard for standard, wire in DEFAULT_KEYS["openpi"].items()}
#: seeds handed to openpi episodes live above the runner's (< 2**32) and below padding's.
OPENPI_SEED_BASE = 2**40


class ServeError(EvalharnessError, ValueError):
    """A server that cannot start as configured; the message names the setting."""


@dataclass(frozen=True)
class ServeConfig:
    """A resolved `evalharness serve`."""

    policy: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    token: str | None = None
    max_message_bytes: int = codec.MAX_MESSAGE_BYTES
    suite: str | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ServeError(f"--max-batch must be >= 1, got {self.max_batch}")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"--port must be in 0..65535, got {self.port}")
        if self.batch_wait_ms < 0:
            raise ServeError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        if self.max_message_bytes < 1024:
            raise ServeError(f"--max-message-mb is too small: {self.max_message_bytes} bytes")

    @property
    def exposed(self) -> bool:
        return self.host not in LOCAL_HOSTS


class RequestError(ValueError):
    """A request the server refuses; its text goes back to the client."""


# ------------------------------------------------------------------------------------------
# Batching: one thread owns the policy; requests from every connection queue up for it.
# ------------------------------------------------------------------------------------------


@dataclass
class _Request:
    obs: dict[str, Any]
    tasks: dict[str, Any]
    rows: int
    session: int = 0
    future: Future[np.ndarray] = field(default_factory=Future)

    def signature(self) -> tuple[Any, ...]:
        """Requests with equal signatures can share one `act()` (same keys, shapes, dtypes)."""
        return tuple(
            sorted(
                (k, v.shape[1:], v.dtype.str) if isinstance(v, np.ndarray) else (k, None, None)
                for k, v in self.obs.items()
            )
        )


def _concat(values: list[Any]) -> Any:
    if isinstance(values[0], np.ndarray):
        if values[0].dtype == object:
            out = np.empty(sum(len(v) for v in values), dtype=object)
            out[:] = [item for v in values for item in v]
            return out
        return np.concatenate(values)
    return [item for v in values for item in v]


class Batcher:
    """Runs every `act()` on one thread, gathering concurrent requests into batches.

    Policies keep per-episode state in `EpisodeStreams`, which forget an episode absent from
    a call (in-process calls are in lockstep). Here one call holds only the requests that
    arrived together, so the batcher tracks each session's live episodes (a connection: an
    openpi client's current episode, a batched client's last request) and puts back the
    state of those that a call left out.
    """

    def __init__(self, policy: Policy, max_batch: int, wait_s: float) -> None:
        self.policy = policy
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._held: deque[_Request] = deque()
        self.batches = 0
        self.rows = 0
        #: open connections; with one, nobody can join a batch, so requests do not wait.
        self.clients = 0
        self._sessions: dict[int, set[int]] = {}  # session -> its live episode seeds
        self._lock = threading.Lock()
        policy.reset(max_batch)
        self._thread = threading.Thread(
            target=self._loop, name="evalharness-serve-act", daemon=True
        )
        self._thread.start()

    def submit(
        self, obs: dict[str, Any], tasks: dict[str, Any], session: int = 0
    ) -> Future[np.ndarray]:
        """Queue one request of ``session``; its seeds are that session's live episodes."""
        rows = len(tasks["language_instruction"])
        request = _Request(obs, tasks, rows, session)
        with self._lock:
            self._sessions[session] = set(np.asarray(tasks["episode_seed"]).tolist())
        self._queue.put(request)
        return request.future

    def end_session(self, session: int) -> None:
        """A connection closed: its episodes are over."""
        with self._lock:
            self._sessions.pop(session, None)

    def close(self) -> None:
        self._queue.put(None)

    def _next(self, timeout: float | None) -> _Request | None:
        if self._held:
            return self._held.popleft()
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            group = [first]
            seeds = set(np.asarray(first.tasks["episode_seed"]).tolist())
            rows = first.rows
            deadline = time.monotonic() + (self.wait_s if self.clients > 1 else 0.0)
            held: list[_Request] = []
            while rows < self.max_batch:
                item = self._next(max(0.0, deadline - time.monotonic()))
                if item is None:
                    break
                item_seeds = set(np.asarray(item.tasks["episode_seed"]).tolist())
                if (
                    rows + item.rows > self.max_batch
                    or item.signature() != first.signature()
                    or seeds & item_seeds
                ):
                    held.append(item)
                    break
                group.append(item)
                seeds |= item_seeds
                rows += item.rows
            self._held.extendleft(reversed(held))
            self._run(group)

    def _run(self, group: list[_Request]) -> None:
        obs = {k: _concat([r.obs[k] for r in group]) for k in group[0].obs}
        tasks = {k: _concat([r.tasks[k] for r in group]) for k in group[0].tasks}
        batch = sum(r.rows for r in group)
        size = padded_size(batch) if self.policy.pad_batch else batch
        obs, tasks = pad_batch(obs, tasks, batch, size)
        members = {r.session for r in group}
        with self._lock:
            elsewhere = set().union(
                *(seeds for s, seeds in self._sessions.items() if s not in members)
            )
        held = [v for v in vars(self.policy).values() if isinstance(v, EpisodeStreams)]
        kept = [{s: h.get(s) for s in elsewhere if s in h} for h in held]
        try:
            actions = check_actions(self.policy, self.policy.act(obs, tasks), size)[:batch]
        except PolicyOutputError as exc:
            for r in group:
                r.future.set_exception(RequestError(str(exc)))
            return
        except Exception as exc:
            error = RequestError(
                f"policy {self.policy.spec.name!r} raised {type(exc).__name__}: {exc}"
            )
            for r in group:
                r.future.set_exception(error)
            return
        for streams, values in zip(held, kept, strict=True):
            streams.restore(values)
        self.batches += 1
        self.rows += batch
        start = 0
        for r in group:
            r.future.set_result(actions[start : start + r.rows])
            start += r.rows


# ------------------------------------------------------------------------------------------
# openpi connections: one observation per request, turned into a windowed batch row.
# ------------------------------------------------------------------------------------------


class OpenpiEpisodes:
    """Per-connection state for openpi clients: the episode's seed and its history window."""

    _counter = 0
    _counter_lock = threading.Lock()

    def __init__(self, policy: Policy) -> None:
        self.spec = policy.spec
        self.window: deque[dict[str, np.ndarray]] = deque(maxlen=self.spec.window_size)
        self.seed = -1
        self.start = True
        self.prompt: str | None = None
        self.explicit = False  # the client sends episode_start messages
        self.real = 0  # real (unpadded) observations of the episode so far

    def new_episode(self) -> None:
        with OpenpiEpisodes._counter_lock:
            OpenpiEpisodes._counter += 1
            self.seed = OPENPI_SEED_BASE + OpenpiEpisodes._counter
        self.window.clear()
        self.start = True

    def request(self, message: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (obs, tasks) batch of one row for an openpi observation."""
        from evalharness.envs.wrappers import resize_frames

        prompt = str(message.get("prompt", ""))
        if self.seed < 0 or (not self.explicit and prompt != self.prompt):
            self.new_episode()
        self.prompt = prompt
        frame: dict[str, np.ndarray] = {}
        for wire, standard in OPENPI_KEYS.items():
            if standard == "language_instruction" or wire not in message:
                continue
            value = message[wire]
            if not isinstance(value, np.ndarray):
                raise RequestError(f"{wire!r} must be a numpy array, got {type(value).__name__}")
            if standard.startswith("image_"):
                if value.ndim != 3 or value.shape[-1] != 3:
                    raise RequestError(f"{wire!r} must be an (H, W, 3) image, got {value.shape}")
                value = np.ascontiguousarray(value.astype(np.uint8, copy=False))
                if self.spec.image_orientation == "raw":
                    value = np.ascontiguousarray(value[::-1, ::-1])
                size = self.spec.image_sizes.get(standard)
                if size is not None and tuple(value.shape[:2]) != tuple(size):
                    value = resize_frames(value, int(size[0]), int(size[1]))
            else:
                value = np.asarray(value, dtype=np.float32).reshape(-1)
            frame[standard] = value
        if self.spec.uses_images and "image_primary" not in frame:
            raise RequestError(
                f"policy {self.spec.name!r} reads camera images: send 'observation/image' "
                f"(got keys {sorted(map(str, message))})"
            )
        if self.window and set(self.window[-1]) != set(frame):
            self.window.clear()
        if not self.window:
            # History pads an episode's start by repeating its first observation.
            self.window.extend([frame] * self.spec.window_size)
            self.real = 1
        else:
            self.window.append(frame)
            self.real += 1
        mask = np.zeros(self.spec.window_size, dtype=bool)
        mask[-min(self.real, self.spec.window_size) :] = True
        obs = {k: np.stack([f[k] for f in self.window])[None] for k in frame}
        obs["timestep_pad_mask"] = mask[None]
        tasks = {
            "language_instruction": [prompt],
            "episode_seed": np.array([self.seed], dtype=np.int64),
            "episode_start": np.array([self.start]),
        }
        self.start = False
        return obs, tasks


# ------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------


def _unpack_privileged(obs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if isinstance(value, list):
            # Simulator state dicts of privileged policies travel as a list, one per row.
            array = np.empty(len(value), dtype=object)
            array[:] = value
            out[key] = array
        elif isinstance(value, np.ndarray):
            out[key] = value
        else:
            raise RequestError(f"obs[{key!r}] must be an array, got {type(value).__name__}")
    return out


def _batched_request(message: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    obs, tasks = message.get("obs"), message.get("tasks")
    if not isinstance(obs, dict) or not isinstance(tasks, dict):
        raise RequestError("a batched request needs 'obs' and 'tasks' dicts")
    needed = ("language_instruction", "episode_seed", "episode_start")
    missing = [k for k in needed if k not in tasks]
    if missing:
        raise RequestError(f"tasks lacks {missing}")
    rows = len(tasks["language_instruction"])
    tasks = {
        "language_instruction": [str(t) for t in tasks["language_instruction"]],
        "episode_seed": np.asarray(tasks["episode_seed"], dtype=np.int64).reshape(-1),
        "episode_start": np.asarray(tasks["episode_start"], dtype=bool).reshape(-1),
    }
    obs = _unpack_privileged(obs)
    for key, value in [*obs.items(), *tasks.items()]:
        if len(value) != rows:
            raise RequestError(f"{key!r} has {len(value)} rows; the batch has {rows}")
    if rows < 1:
        raise RequestError("an empty batch")
    return obs, tasks


def metadata(config: ServeConfig, policy: Policy) -> dict[str, Any]:
    """The first message of every connection: openpi-style metadata plus evalharness's entry."""
    spec = dataclasses.asdict(policy.spec)
    spec["dataset_statistics"] = None
    spec["image_sizes"] = {k: list(v) for k, v in policy.spec.image_sizes.items()}
    path = parse_policy_string(config.policy).path
    return {
        "server": f"evalharness {__version__}",
        "policy": config.policy,
        "action_horizon": policy.spec.action_horizon,
        "action_dim": policy.spec.action_dim,
        EVALHARNESS_KEY: {
            "protocol_version": EVALHARNESS_PROTOCOL_VERSION,
            "evalharness_version": __version__,
            "policy": config.policy,
            "checkpoint": policy.checkpoint,
            # For an hf:// checkpoint also the commit it resolved to (checkpoint_hub).
            **checkpoint_identity(path),
            "spec": json.loads(json.dumps(spec, default=str)),
            "max_batch": config.max_batch,
            "max_message_bytes": config.max_message_bytes,
        },
    }


class PolicyServer:
    """The WebSocket server; `run()` blocks, `start()` runs it on a thread (tests)."""

    def __init__(self, config: ServeConfig, policy: Policy) -> None:
        self.config = config
        self.policy = policy
        self.batcher = Batcher(policy, config.max_batch, config.batch_wait_ms / 1000.0)
        self.metadata = codec.pack(metadata(config, policy), codec.OPENPI, None)
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0

    # -- HTTP: health and the token ----------------------------------------------------------
    def _process_request(self, connection: Any, request: Any) -> Any:
        path = request.path.split("?", 1)[0]
        if path in ("/health", "/healthz"):
            body = json.dumps({"status": "ok", "policy": self.config.policy}) + "\n"
            return connection.respond(HTTPStatus.OK, body)
        token = self.config.token
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {token}".encode()):
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED, "missing or wrong token (Authorization: Api-Key)\n"
                )
        return None

    # -- one connection ----------------------------------------------------------------------
    async def _handler(self, ws: Any) -> None:
        import websockets

        self.connections += 1
        session = self.connections
        self.batcher.clients += 1
        episodes = OpenpiEpisodes(self.policy)
        try:
            await ws.send(self.metadata)
            async for data in ws:
                if isinstance(data, str):
                    await ws.send("expected binary msgpack frames, got text")
                    continue
                try:
                    message = codec.unpack(data, self.config.max_message_bytes)
                except codec.CodecError as exc:
                    await ws.send(f"refused: {exc}")
                    await ws.close(code=1003, reason="refused payload")
                    return
                try:
                    reply = await self._answer(message, episodes, session)
                except RequestError as exc:
                    await ws.send(f"error: {exc}")
                    continue
                await ws.send(codec.pack(reply, codec.OPENPI, None))
        except websockets.exceptions.ConnectionClosed:
            return
        finally:
            self.batcher.clients -= 1
            self.batcher.end_session(session)

    async def _answer(self, message: Any, episodes: OpenpiEpisodes, session: int) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise RequestError(f"expected a dict, got {type(message).__name__}")
        ctrl = message.get("__ctrl__")
        if ctrl is not None:
            if ctrl == "episode_start":
                episodes.explicit = True
                episodes.new_episode()
            elif ctrl == "episode_end":
                episodes.seed = -1
                self.batcher.end_session(session)
            return {"__ack__": ctrl if ctrl in ("episode_start", "episode_end") else "ignored"}
        started = time.monotonic()
        if message.get(EVALHARNESS_KEY) == "act":
            obs, tasks = _batched_request(message)
        else:
            obs, tasks = episodes.request(message)
        future = self.batcher.submit(obs, tasks, session)
        actions = await asyncio.wrap_future(future)
        infer_ms = 1000.0 * (time.monotonic() - started)
        if EVALHARNESS_KEY in message:
            return {"actions": actions, "server_timing": {"infer_ms": infer_ms}}
        return {"actions": actions[0], "server_timing": {"infer_ms": infer_ms}}

    # -- lifecycle ---------------------------------------------------------------------------
    async def serve(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Serve until `stop()`; calls ``on_ready(port)`` once listening."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handler,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,
            max_size=self.config.max_message_bytes,
            # act() runs on its own thread, so the loop always answers pings; a ping every
            # 20 s still finds clients that vanished without closing. The pong may wait on a
            # client whose machine is saturated (a simulator on every core, GIL-bound envs),
            # which is busy, not gone: 20 s (the default) closed such runs with code 1011.
            ping_interval=20,
            ping_timeout=120,
        ) as server:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            self._ready.set()
            if on_ready is not None:
                on_ready(self.port)
            await self._stop.wait()
        self.batcher.close()

    def start(self) -> int:
        """Serve on a background thread; returns the bound port."""
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.serve()), name="evalharness-serve", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(30):
            raise ServeError(f"the server did not start listening on {self.config.host}")
        assert self.port is not None
        return self.port

    def stop(self) -> None:
        """Stop serving (from any thread) and wait for the server thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)


def exposure_warnings(config: ServeConfig) -> list[str]:
    """What to tell the user about who can reach the server."""
    if not config.exposed:
        return []
    warnings = [f"serving on {config.host}: machines that can reach this host can query the policy"]
    if not config.token:
        warnings.append(
            f"no --token (or {TOKEN_ENV}) is set: anyone who reaches the port can use it"
        )
    return warnings


def serve(config: ServeConfig, policy: Policy | None = None) -> None:
    """Load the policy, print where it is served, and serve until interrupted."""
    if policy is None:
        policy = load_policy(config.policy, suite=config.suite)
    for warning in exposure_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    server = PolicyServer(config, policy)

    def ready(port: int) -> None:
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(
            f"serving {config.policy} on ws://{host}:{port} (openpi and evalharness protocols; "
            f"health: http://{host}:{port}/health; max batch {config.max_batch})",
            flush=True,
        )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve(ready))
