"""`--policy "remote:ws://HOST:PORT?protocol=evalharness|openpi|vlaeval&..."`: a model behind a
policy server, evaluated like any in-process policy.

- ``protocol=evalharness`` (default; `evalharness serve`): one connection; each `act()` sends
  the whole batch of windowed observations with the episode seeds and returns the server
  policy's chunks. The spec (window, horizons, image sizes, orientation, ...) is the served
  policy's own, read from the server's metadata, so the env wrappers are the ones it would
  get in-process.
- ``protocol=openpi`` / ``protocol=vlaeval``: the peers serve one observation per request,
  so each live episode gets a connection of its own (reused by later episodes) and the
  batch's requests go out concurrently. The newest frame of each env is sent under the key
  map's names (see `keymap`); ``action_horizon`` actions of each returned chunk are kept
  and ``exec_horizon`` of them executed before the next request.

Options: `RemoteOptions` (one docstring per field; ``evalharness policies`` lists them).

The token for a server started with ``--token`` is read from the ``EVALHARNESS_TOKEN``
environment variable, never from the policy string (which run.json records).

What the server said about itself (its metadata or HELLO) is the policy's `identity`, part
of the run's identity: ``--resume`` against a server holding another model is refused.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np

from evalharness.policies.base import POLICY_TIMEOUT, Policy, PolicySpec
from evalharness.policies.common.options import OptionError, option_field, parse_options
from evalharness.policies.remote import codec
from evalharness.policies.remote.client import (
    TOKEN_ENV,
    Endpoint,
    EvalharnessSession,
    OpenpiSession,
    RemoteError,
    RemoteTimeout,
    VlaEvalSession,
)
from evalharness.policies.remote.keymap import parse_key_map, wire_observation

PROTOCOLS = ("evalharness", "openpi", "vlaeval")
#: options that only the one-observation protocols read; an evalharness server sends its spec.
PEER_ONLY = ("action_horizon", "exec_horizon", "image_size", "keys", "episode_messages")
OWNER = "policy 'remote'"
#: openpi's LIBERO client executes this many actions of each chunk (``replan_steps``).
OPENPI_REPLAN_STEPS = 5
OPENPI_IMAGE_SIZE = 224


@dataclass(frozen=True)
class RemoteOptions:
    """Options of ``remote:ws://HOST:PORT?...``."""

    protocol: Literal["evalharness", "openpi", "vlaeval"] = "evalharness"
    """the server's wire protocol: evalharness (``evalharness serve``, whole batches), openpi
    or vlaeval (one observation per request)."""
    timeout: float = 60.0
    """seconds to wait for one reply (and for a connection to open)."""
    retries: int = option_field(4, minimum=0)
    """connection attempts after the first fails, waiting 0.5 s, 1 s, 2 s, ... between."""
    max_message_mb: int = option_field(codec.MAX_MESSAGE_BYTES // 2**20, minimum=1)
    """largest message sent or accepted, in MiB."""
    action_horizon: int | None = option_field(None, minimum=1)
    """openpi/vlaeval: actions kept of each returned chunk (default: the metadata's
    ``action_horizon``, else 5 for openpi as its LIBERO client's replan_steps, 1 for vlaeval)."""
    exec_horizon: int | None = option_field(None, minimum=1)
    """openpi/vlaeval: actions executed before the next request (default: min(action_horizon,
    5) for openpi, action_horizon for vlaeval)."""
    image_size: int | None = option_field(None, minimum=0)
    """openpi/vlaeval: square size frames are resize_with_pad-ed to before sending (default
    224 for openpi, as its LIBERO client; 0 sends frames as rendered)."""
    keys: str = ""
    """openpi/vlaeval: key map overrides, ``image_primary:WIRE,image_wrist:,...`` (an empty
    WIRE leaves that observation out; ``.`` nests: ``images.agentview``)."""
    episode_messages: bool = False
    """openpi: send ``episode_start``/``episode_end`` control messages (newer openpi servers
    understand them, older ones fail on them). vla-eval always gets its episode messages."""

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> RemoteOptions:
        """Validate ``?key=value`` options, naming the one that is wrong."""
        parsed = parse_options(cls, options, OWNER)
        if not parsed.timeout > 0:
            raise OptionError(f"{OWNER}: option timeout={parsed.timeout} must be > 0 seconds")
        if parsed.protocol == "evalharness":
            local = sorted(set(options) & set(PEER_ONLY))
            if local:
                raise OptionError(
                    f"{OWNER}: option(s) {local} apply to protocol=openpi|vlaeval; an "
                    "evalharness server sends its policy's spec (override the chunk execution "
                    "with --exec-horizon)"
                )
        else:
            parsed.key_map()  # a malformed key map is named now, not at the first act()
        return parsed

    def key_map(self) -> dict[str, str]:
        """The wire names of the standard observation keys (openpi and vla-eval)."""
        return parse_key_map(self.protocol, self.keys, OWNER)

    def resolved_image_size(self) -> int | None:
        """Square size frames are sent at; None: as rendered."""
        size = self.image_size
        if size is None:
            size = OPENPI_IMAGE_SIZE if self.protocol == "openpi" else 0
        return size or None


def check_url(path: str | None) -> str:
    """The server URL of a ``remote:URL`` string, checked."""
    if not path:
        raise OptionError(f"{OWNER} needs the server's URL: remote:ws://HOST:PORT[?protocol=...]")
    parsed = urlparse(path)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise OptionError(
            f"{OWNER}: {path!r} is not a WebSocket URL; expected ws://HOST:PORT "
            "(or wss://HOST:PORT)"
        )
    return path


def endpoint(url: str, options: RemoteOptions) -> Endpoint:
    """Where to connect and how patiently; the token comes from the environment."""
    return Endpoint(
        url=url,
        token=os.environ.get(TOKEN_ENV) or None,
        timeout=options.timeout,
        retries=options.retries,
        max_message_bytes=options.max_message_mb * 2**20,
    )


def _plain(value: Any) -> Any:
    """Server metadata as JSON-able data (arrays to lists, bytes to hex)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _digest(identity: Mapping[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RemotePolicy(Policy):
    """A policy whose `act()` is answered by a server; see the module docstring."""

    #: requests carry exactly the live envs: padding would only cost bandwidth.
    pad_batch = False
    #: each pipeline lane is a connection of its own (see `pipeline_lanes`).
    pipelines = True

    def __init__(self, url: str, options: RemoteOptions) -> None:
        self.url = url
        self.options = options
        self.keys = options.key_map() if options.protocol != "evalharness" else {}
        self.image_size = options.resolved_image_size()
        self.endpoint = endpoint(url, options)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._episodes: dict[int, Any] = {}  # episode_seed -> its session (openpi, vla-eval)
        self._pool: ThreadPoolExecutor | None = None
        #: episode_seed -> why its request timed out: that episode ends as POLICY_TIMEOUT.
        self._timed_out: dict[int, str] = {}
        first = self._open()
        if options.protocol == "evalharness":
            assert isinstance(first, EvalharnessSession)
            self._batched: EvalharnessSession | None = first
            self.spec = _served_spec(first.info)
            served = {k: first.info.get(k) for k in ("policy", "checkpoint", "checkpoint_sha256")}
            self.identity: dict[str, Any] = (
                {"protocol": "evalharness"}
                | _plain(served)
                | {"spec": _plain(first.info.get("spec", {}))}
            )
            self.checkpoint = f"{first.info.get('policy')} via {url}"
        else:
            self._batched = None
            self._idle.append(first)
            described = first.metadata if isinstance(first, OpenpiSession) else first.hello
            self.spec = self._peer_spec(described)
            self.identity = {"protocol": options.protocol, "server": _plain(described)}
            self.checkpoint = (
                f"{options.protocol} server {url} "
                f"(metadata sha256 {_digest(self.identity['server'])[:12]})"
            )
        atexit.register(self.close)

    # -- construction ------------------------------------------------------------------------
    def _open(self) -> Any:
        if self.options.protocol == "evalharness":
            return EvalharnessSession(self.endpoint)
        if self.options.protocol == "openpi":
            return OpenpiSession(self.endpoint)
        return VlaEvalSession(self.endpoint)

    def _peer_spec(self, described: Mapping[str, Any]) -> PolicySpec:
        o = self.options
        advertised = described.get("action_horizon")
        default = OPENPI_REPLAN_STEPS if o.protocol == "openpi" else 1
        if isinstance(advertised, int) and not isinstance(advertised, bool) and advertised > 0:
            default = advertised
        horizon = o.action_horizon or default
        exec_horizon = o.exec_horizon or min(horizon, OPENPI_REPLAN_STEPS)
        if o.protocol == "vlaeval" and o.exec_horizon is None:
            exec_horizon = horizon
        if exec_horizon > horizon:
            raise OptionError(
                f"{OWNER}: exec_horizon={exec_horizon} exceeds action_horizon={horizon}"
            )
        return PolicySpec(
            name="remote",
            action_horizon=horizon,
            exec_horizon=exec_horizon,
            needs_language="language_instruction" in self.keys,
            uses_images=any(k.startswith("image_") for k in self.keys),
        )

    # -- the contract ------------------------------------------------------------------------
    def reset(self, batch_size: int) -> None:
        """End every open episode on the server; connections stay open for reuse."""
        for seed in list(self._episodes):
            self._end(seed)
        self._timed_out.clear()

    def failure_reason(self, episode_seed: int) -> str:
        """`POLICY_TIMEOUT` for an episode whose request got no reply within the timeout."""
        return POLICY_TIMEOUT if int(episode_seed) in self._timed_out else ""

    def failure_detail(self, episode_seed: int) -> str:
        """The timed-out request's error message."""
        return self._timed_out.get(int(episode_seed), "")

    def pipeline_lanes(self, n: int) -> list[Policy]:
        """This policy and ``n - 1`` more connections to the same server. A server keeps
        each connection's episodes apart, so each lane may be called for its own group of
        envs; a server that now holds another model than this policy's is refused."""
        lanes: list[Policy] = [self]
        for _ in range(n - 1):
            lane = RemotePolicy(self.url, self.options)
            if lane.identity != self.identity:
                lane.close()
                raise RemoteError(
                    f"policy server {self.url} changed model between connections: "
                    f"{lane.identity} after {self.identity}"
                )
            lanes.append(lane)
        return lanes

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        instructions = [str(t) for t in tasks["language_instruction"]]
        batch = len(instructions)
        seeds = np.asarray(tasks.get("episode_seed", np.arange(batch)), dtype=np.int64).reshape(-1)
        starts = np.asarray(tasks.get("episode_start", np.zeros(batch, bool)), bool).reshape(-1)
        if self._batched is not None:
            return self._act_batched(obs, instructions, seeds, starts)
        # In lockstep every live episode is in every batch: an absent seed has ended.
        for seed in set(self._episodes) - set(seeds.tolist()):
            self._end(seed)
        jobs = [
            (int(seed), bool(start), instructions[i], obs, i)
            for i, (seed, start) in enumerate(zip(seeds.tolist(), starts.tolist(), strict=True))
        ]
        if self._pool is None or self._pool._max_workers < batch:
            self._pool = ThreadPoolExecutor(max_workers=max(batch, 1), thread_name_prefix="remote")
        chunks = list(self._pool.map(lambda job: self._act_one(*job), jobs))
        return np.stack(chunks)

    # -- evalharness: one request per batch ----------------------------------------------------
    def _act_batched(
        self,
        obs: Mapping[str, np.ndarray],
        instructions: list[str],
        seeds: np.ndarray,
        starts: np.ndarray,
    ) -> np.ndarray:
        assert self._batched is not None
        if self._batched.closed:
            self._batched = EvalharnessSession(self.endpoint)
        wire: dict[str, Any] = {}
        for key, value in obs.items():
            if isinstance(value, np.ndarray) and value.dtype == object:
                # Simulator state for privileged policies: one dict per env, as plain data.
                wire[key] = list(value)
            else:
                wire[key] = value
        tasks = {
            "language_instruction": instructions,
            "episode_seed": seeds,
            "episode_start": starts,
        }
        try:
            return self._batched.act(wire, tasks)
        except RemoteTimeout as exc:
            # One request carries the batch: each of its episodes timed out (the session
            # closed itself; the next call reconnects).
            for seed in seeds.tolist():
                self._timed_out[int(seed)] = str(exc)
            return np.zeros((len(seeds), self.spec.action_horizon, self.spec.action_dim))

    # -- openpi / vla-eval: one connection per live episode ----------------------------------
    def _session_for(self, seed: int, start: bool, instruction: str) -> Any:
        with self._lock:
            session = self._episodes.get(seed)
            if session is not None and (start or session.closed):
                del self._episodes[seed]
                self._idle.append(session)
                session = None
            if session is not None:
                return session
            while self._idle and self._idle[-1].closed:
                self._idle.pop()
            session = self._idle.pop() if self._idle else None
        if session is None:
            session = self._open()
        if isinstance(session, VlaEvalSession):
            session.episode_start(
                {
                    "task": {
                        "name": instruction,
                        "task_description": instruction,
                        "episode_seed": seed,
                    }
                }
            )
        elif self.options.episode_messages:
            session.control(
                {
                    "__ctrl__": "episode_start",
                    "__experiment__": "evalharness",
                    "__task__": instruction,
                    "__episode_id__": seed,
                }
            )
        with self._lock:
            self._episodes[seed] = session
        return session

    def _end(self, seed: int) -> None:
        with self._lock:
            session = self._episodes.pop(seed, None)
        if session is None or session.closed:
            return
        try:
            if isinstance(session, VlaEvalSession):
                session.episode_end({})
            elif self.options.episode_messages:
                session.control({"__ctrl__": "episode_end"})
        except RemoteError:
            return  # the next episode opens a fresh connection
        with self._lock:
            self._idle.append(session)

    def _act_one(
        self, seed: int, start: bool, instruction: str, obs: Mapping[str, np.ndarray], row: int
    ) -> np.ndarray:
        session = self._session_for(seed, start, instruction)
        message = wire_observation(obs, row, instruction, self.keys, self.image_size)
        try:
            reply = (
                session.infer(message)
                if isinstance(session, OpenpiSession)
                else session.act(message)
            )
        except RemoteTimeout as exc:
            # This episode ends as POLICY_TIMEOUT; its actions are never executed.
            self._timed_out[seed] = str(exc)
            return np.zeros((self.spec.action_horizon, self.spec.action_dim))
        return self._chunk(reply)

    def _chunk(self, reply: Mapping[str, Any]) -> np.ndarray:
        spec = self.spec
        raw = reply.get("actions", reply.get("action"))
        try:
            actions = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise RemoteError(
                f"policy server {self.url} returned non-numeric actions ({type(raw).__name__})"
            ) from None
        if actions.ndim == 1:
            actions = actions[None]
        if actions.ndim != 2 or actions.shape[1] != spec.action_dim:
            raise RemoteError(
                f"policy server {self.url} returned actions of shape {actions.shape}; "
                f"expected (chunk, {spec.action_dim}) or ({spec.action_dim},)"
            )
        if len(actions) < spec.action_horizon:
            raise RemoteError(
                f"policy server {self.url} returned a chunk of {len(actions)} actions; "
                f"action_horizon={spec.action_horizon} needs at least that many (lower the "
                "option action_horizon)"
            )
        return actions[: spec.action_horizon]

    def close(self) -> None:
        """End open episodes and close every connection."""
        for seed in list(self._episodes):
            self._end(seed)
        sessions = list(self._idle) + ([self._batched] if self._batched else [])
        self._idle.clear()
        for session in sessions:
            session.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _served_spec(info: Mapping[str, Any]) -> PolicySpec:
    """The served policy's spec from an evalharness server's metadata, named ``remote``."""
    raw = dict(info.get("spec") or {})
    known = {f for f in PolicySpec.__dataclass_fields__}
    fields = {k: v for k, v in raw.items() if k in known and k != "dataset_statistics"}
    fields["name"] = "remote"  # the served policy's own name is in the identity
    fields["image_sizes"] = {
        str(k): (int(v[0]), int(v[1])) for k, v in dict(fields.get("image_sizes") or {}).items()
    }
    try:
        return PolicySpec(**fields)
    except (TypeError, ValueError) as exc:
        raise RemoteError(f"the server's policy spec is not usable: {exc}") from exc


def make_remote_policy(path: str | None = None, **options: str) -> RemotePolicy:
    """Factory for ``remote:ws://HOST:PORT?protocol=...``; connects at once, so an unreachable
    server or a wrong token is named before any env is built."""
    return RemotePolicy(check_url(path), RemoteOptions.parse(options))
