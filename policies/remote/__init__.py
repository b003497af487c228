"""The `remote` family: a policy behind a WebSocket server, evaluated like any other.

``--policy "remote:ws://HOST:PORT?protocol=evalharness|openpi|vlaeval&..."``. The client side
of three wire protocols (`client`), their numpy msgpack encodings (`codec`), the observation
key maps of each peer's LIBERO client (`keymap`), and the `Policy` adapter (`policy`). The
server side, `evalharness serve`, lives in `evalharness.serve`.
"""
