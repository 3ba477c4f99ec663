"""The cluster secret: how a node proves to another that it belongs to the cluster.

Theory of operation (docs/security.md, docs/protocol.md §2). A node dialling another says
HELLO with its id (``peer_node_id`` for a peer link, ``member_id`` for its own client, the HTTP
forwarder) and a fresh random ``nonce``. The node dialled answers WELCOME with a fresh nonce of
its own (``challenge``) and ``proof = HMAC-SHA256(secret, "welcome" | transcript)``; the dialler
checks that proof (so it never sends Raft messages to a node that does not hold the secret),
then says HELLO again with the same ids and ``proof = HMAC-SHA256(secret, "hello" |
transcript)``. Only then is the connection a member's: until it is, a PEER frame closes it and
every request is refused.

The transcript is both node ids, the kind of link and both nonces, in fixed-width fields. So a
recorded HELLO is useless: its proof answers a challenge the server will never make again, a
proof for one node does not open another, and the two labels keep a WELCOME proof from being
reflected as a HELLO proof. The secret never crosses the wire.

What it does not do: it authenticates the start of a connection, not every frame after it; an
attacker who can rewrite traffic on the path can still hijack a link after the handshake. TLS
(``--tls-cert``/``--tls-ca``) closes that gap; docs/security.md says so.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from unimeter.errors import AuthError
from unimeter.wire import messages as m

NONCE_BYTES = 32
PROOF_BYTES = 32  # HMAC-SHA256
SECRET_BYTES_MIN = 16  # after stripping surrounding whitespace
WELCOME = b"unimeter-cluster-v1 welcome"  # the accepting node proves with this label
HELLO = b"unimeter-cluster-v1 hello"  # the dialling node, with this one


class SecretFileError(ValueError):
    """The cluster secret file cannot be used."""


def load_secret(path: str | Path) -> bytes:
    """The secret in ``path`` (surrounding whitespace stripped, so a trailing newline from
    ``echo`` does not matter). At least ``SECRET_BYTES_MIN`` bytes."""
    try:
        raw = Path(path).read_bytes().strip()
    except OSError as exc:
        raise SecretFileError(f"cannot read the cluster secret file {path}: {exc}") from None
    if len(raw) < SECRET_BYTES_MIN:
        raise SecretFileError(
            f"the cluster secret in {path} is {len(raw)} bytes; use at least "
            f"{SECRET_BYTES_MIN} random bytes (e.g. `openssl rand -hex 32 > {path}`)"
        )
    return raw


def readable_by_others(path: str | Path) -> bool:
    """Whether the group or other users may read ``path`` (worth a warning for a secret)."""
    mode = os.stat(path).st_mode
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def _transcript(
    server_id: int, member_id: int, link: bool, client_nonce: bytes, server_nonce: bytes
) -> bytes:
    assert len(client_nonce) == NONCE_BYTES and len(server_nonce) == NONCE_BYTES
    return b"".join(
        (
            server_id.to_bytes(8, "big"),
            member_id.to_bytes(8, "big"),
            b"\x01" if link else b"\x00",
            client_nonce,
            server_nonce,
        )
    )


def proof(
    label: bytes,
    secret: bytes,
    server_id: int,
    member_id: int,
    link: bool,
    client_nonce: bytes,
    server_nonce: bytes,
) -> bytes:
    """HMAC of the handshake transcript; ``label`` (``WELCOME`` or ``HELLO``) tells the two
    directions apart, so a proof can never be reflected back as the other side's."""
    body = _transcript(server_id, member_id, link, client_nonce, server_nonce)
    return hmac.new(secret, label + body, hashlib.sha256).digest()


class MemberGreeting:
    """The dialler's side of the handshake, for one connection (a fresh nonce each).

    ``first()`` is the HELLO to send; ``second(welcome)`` checks the WELCOME's proof and
    returns the proving HELLO (None when this node has no secret: then the first HELLO was
    all). Raises ``AuthError`` when the other node cannot prove the secret, or proves one this
    node does not hold.
    """

    def __init__(
        self,
        secret: bytes | None,
        node_id: int,
        *,
        link: bool,
        client_name: str,
        expect_node: int | None = None,
    ) -> None:
        self.secret = secret
        self.node_id = node_id
        self.link = link
        self.client_name = client_name
        self.expect_node = expect_node
        self._nonce = new_nonce() if secret is not None else None

    def _hello(self, proof: bytes | None = None) -> m.Hello:
        return m.Hello(
            version=m.PROTOCOL_VERSION,
            client_name=self.client_name,
            peer_node_id=self.node_id if self.link else None,
            member_id=None if self.link else self.node_id,
            nonce=self._nonce,
            proof=proof,
        )

    def first(self) -> m.Hello:
        return self._hello()

    def second(self, welcome: m.Welcome) -> m.Hello | None:
        if self.expect_node is not None and welcome.node_id != self.expect_node:
            raise AuthError(f"expected node {self.expect_node}, reached node {welcome.node_id}")
        if self.secret is None:
            if welcome.challenge is not None:
                raise AuthError(
                    f"node {welcome.node_id} requires the cluster secret; this node has none "
                    "(--cluster-secret-file)"
                )
            return None
        assert self._nonce is not None
        if welcome.challenge is None or welcome.proof is None:
            raise AuthError(
                f"node {welcome.node_id} did not prove the cluster secret (it has none, or "
                "runs an older version); refusing to treat it as a member"
            )
        # The transcript both proofs cover; only their labels differ.
        facts = (self.secret, welcome.node_id, self.node_id, self.link, self._nonce)
        if not hmac.compare_digest(proof(WELCOME, *facts, welcome.challenge), welcome.proof):
            raise AuthError(
                f"node {welcome.node_id} holds a different cluster secret; check "
                "--cluster-secret-file on both nodes"
            )
        return self._hello(proof(HELLO, *facts, welcome.challenge))
