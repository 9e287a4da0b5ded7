"""The protocol wing: what another language's client would reimplement, and nothing else.

No module here imports a socket library or anyio (a test checks it). Bytes go in, events come
out, bytes go out: ``connection`` holds the two state machines (the handshake is a state of
theirs), ``events`` what frames become, ``frames`` the framing and its bounds, ``ops`` the
operations and their arguments, ``codec`` the values, ``auth`` the HMAC handshake, and
``addresses`` how users write where a server is. docs/PROTOCOL.md is this package in prose.
"""
