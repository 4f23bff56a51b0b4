"""The cluster secret: CURVE encryption and authentication on every actor socket, signed beacons.

One secret (`--cluster-key` or EXO_ACTOR_CLUSTER_KEY) makes a cluster. Everything is derived from it:
a master key by scrypt (slow on purpose: a captured beacon cannot be used to guess a weak secret
quickly), then by HMAC-SHA256 with fixed labels

  - the CURVE server keypair every node's ROUTER uses (a client must know the server's public key
    to even start the handshake, so only key holders can connect),
  - the CURVE client keypair every node's DEALERs use, the only client key the ZAP handler admits,
  - the beacon key: each UDP beacon carries an HMAC-SHA256 tag; beacons without a valid tag are
    dropped, so a node without the secret is neither listed nor connected to.

All traffic between nodes is then encrypted and authenticated by CurveZMQ (Curve25519, XSalsa20,
Poly1305, with perfect forward secrecy per connection). Rotating the secret means restarting the
nodes with a new one. Membership is all-or-nothing: anyone holding the secret is a full member.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

import zmq
import zmq.asyncio
from zmq.utils import z85

from ..errors import ExoError

MIN_LENGTH = 16
TAG = 32  # bytes of HMAC-SHA256 on a beacon
_SALT = b"exo-actor cluster key v1"


class ClusterKeyError(ExoError):
    """An unusable cluster key."""


def new_key() -> str:
    """A fresh random cluster key (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def _keypair(master: bytes, label: bytes) -> tuple[bytes, bytes]:
    secret = z85.encode(hmac.new(master, label, hashlib.sha256).digest())
    return zmq.curve_public(secret), secret


@dataclass(frozen=True)
class ClusterKey:
    server_public: bytes
    server_secret: bytes = field(repr=False)
    client_public: bytes
    client_secret: bytes = field(repr=False)
    beacon_key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str) -> ClusterKey:
        if len(secret) < MIN_LENGTH:
            raise ClusterKeyError(
                f"the cluster key must be at least {MIN_LENGTH} characters (got {len(secret)}); "
                "`exo-actor keygen` prints a strong one"
            )
        if not zmq.has("curve"):
            raise ClusterKeyError("this libzmq has no CURVE support: install pyzmq from its wheels (pip install pyzmq)")
        master = hashlib.scrypt(secret.encode(), salt=_SALT, n=1 << 14, r=8, p=1, dklen=32)
        server_public, server_secret = _keypair(master, b"curve server")
        client_public, client_secret = _keypair(master, b"curve client")
        beacon_key = hmac.new(master, b"beacon", hashlib.sha256).digest()
        return cls(server_public, server_secret, client_public, client_secret, beacon_key)

    def serve(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        """Make a ROUTER a CURVE server (before bind)."""
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True

    def client(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        """Make a DEALER a CURVE client of the cluster's servers (before connect)."""
        sock.curve_secretkey = self.client_secret
        sock.curve_publickey = self.client_public
        sock.curve_serverkey = self.server_public

    def sign(self, data: bytes) -> bytes:
        return data + hmac.new(self.beacon_key, data, hashlib.sha256).digest()

    def verify(self, datagram: bytes) -> bytes | None:
        """The beacon's payload if its tag is valid, else None."""
        data, tag = datagram[:-TAG], datagram[-TAG:]
        expected = hmac.new(self.beacon_key, data, hashlib.sha256).digest()
        return data if len(datagram) > TAG and hmac.compare_digest(tag, expected) else None


class _OnlyOurClients:
    """ZAP credentials check: the one client key derived from the secret."""

    def __init__(self, key: ClusterKey) -> None:
        self.key = key
        self.refused = 0

    def callback(self, domain: str, client_key: bytes) -> bool:
        ok = hmac.compare_digest(client_key, self.key.client_public)
        if not ok:
            self.refused += 1
        return ok


def start_authenticator(ctx: zmq.asyncio.Context, key: ClusterKey):  # type: ignore[no-untyped-def]
    """A ZAP handler on ctx admitting only the cluster's client key; returns (authenticator, check)."""
    from zmq.auth.asyncio import AsyncioAuthenticator

    auth = AsyncioAuthenticator(ctx)
    auth.start()
    check = _OnlyOurClients(key)
    auth.configure_curve_callback("*", check)
    return auth, check
