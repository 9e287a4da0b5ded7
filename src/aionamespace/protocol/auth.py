"""Mutual HMAC-SHA256 challenge-response, sans-IO (docs/PROTOCOL.md, "Authentication").

Each side sends 32 random bytes in its hello; each proves it knows the key by an HMAC over both
challenges, with a different label per direction so one side's proof can never be replayed as
the other's. The key itself never crosses the socket, and proofs are compared with
``hmac.compare_digest``. The server proves itself first, in its hello, so a client never sends
a proof (or anything else) to a server that does not know the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["CHALLENGE_BYTES", "client_proof", "new_challenge", "proof_matches", "server_proof"]

CHALLENGE_BYTES = 32
_SERVER_LABEL = b"aionamespace/1 server proof\x00"
_CLIENT_LABEL = b"aionamespace/1 client proof\x00"


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_BYTES)


def server_proof(authkey: bytes, client_challenge: bytes, server_challenge: bytes) -> bytes:
    return hmac.new(
        authkey, _SERVER_LABEL + client_challenge + server_challenge, hashlib.sha256
    ).digest()


def client_proof(authkey: bytes, client_challenge: bytes, server_challenge: bytes) -> bytes:
    return hmac.new(
        authkey, _CLIENT_LABEL + server_challenge + client_challenge, hashlib.sha256
    ).digest()


def proof_matches(expected: bytes, given: object) -> bool:
    return type(given) is bytes and hmac.compare_digest(expected, given)


def is_challenge(value: object) -> bool:
    return type(value) is bytes and len(value) == CHALLENGE_BYTES
