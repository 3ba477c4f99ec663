"""The node's side of authentication: who a HELLO (or an HTTP bearer token) makes a
connection, and whether that principal may send a request of a given kind.

Per connection states (one ``HelloGate`` each; the connection actor only asks it):
    NEW       --HELLO with a valid token (or none needed)--> principal set
    NEW       --HELLO from a member, with nonce-----------> CHALLENGED (WELCOME carries ours)
    CHALLENGED --HELLO with the right proof---------------> principal MEMBER
    CHALLENGED --anything else----------------------------> NEW, refused AUTH
    any       --HELLO that fails--------------------------> refused AUTH, principal unchanged
A refused HELLO leaves the connection un-greeted; the client may try again on it.

Every refusal is counted by protocol and reason (``refusals``, exported on ``/metrics``) and
logged with the token's *name* when there is one, never the token (at WARNING at most once per
10 s for each protocol and reason, the rest at DEBUG).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from unimeter.security import cluster_secret as cs
from unimeter.security.roles import GRANTS, REQUIRED, Role, allows
from unimeter.security.tokens import TokenEntry, TokenFileError, TokenTable, digest_of
from unimeter.wire import messages as m

log = logging.getLogger("unimeter.auth")

_ALL_KINDS = frozenset(REQUIRED)
refusal_log_interval_s = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection (or an HTTP request) acts as."""

    name: str
    role: Role
    kinds: frozenset[m.Kind]  # the request kinds it may send
    digest: bytes | None = None  # its token's hash, to find it again after a reload
    generation: int = 0  # the token file version it was found in

    def may(self, kind: m.Kind) -> bool:
        return kind in self.kinds


def _kinds_of(role: Role) -> frozenset[m.Kind]:
    return frozenset(k for k in _ALL_KINDS if allows(role, k))


OPEN = Principal(name="anonymous", role=Role.ADMIN, kinds=_kinds_of(Role.ADMIN))  # tokens off
MEMBER = Principal(name="member", role=Role.MEMBER, kinds=_kinds_of(Role.MEMBER))
_ROLE_KINDS = {role: _kinds_of(role) for role in GRANTS}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer a HELLO: a principal (greeted), a challenge to put in WELCOME (not
    greeted yet), or a refusal (AUTH, with a message for the client)."""

    principal: Principal | None = None
    challenge: bytes | None = None
    proof: bytes | None = None
    refusal: str | None = None


class Gatekeeper:
    """The node's token table and cluster secret, and the counts of what it refused."""

    def __init__(
        self,
        node_id: int,
        *,
        tokens: TokenTable | None = None,
        token_path: str | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.node_id = node_id
        self.tokens = tokens
        self.token_path = token_path
        self.secret = secret
        self.generation = 0
        self.refusals: Counter[tuple[str, str]] = Counter()  # (protocol, reason) -> count
        self._logged: dict[tuple[str, str], float] = {}  # when each was last logged

    @property
    def tokens_required(self) -> bool:
        return self.tokens is not None

    # ------------------------------------------------------------------ tokens

    def _principal(self, entry: TokenEntry) -> Principal:
        return Principal(
            name=entry.name, role=entry.role, kinds=_ROLE_KINDS[entry.role],
            digest=entry.digest, generation=self.generation,
        )  # fmt: skip

    def bearer(self, token: str | None, protocol: str, peer: str = "?") -> Principal | str:
        """The principal of a client token, or the refusal's message (counted)."""
        if self.tokens is None:
            return OPEN
        if not token:
            self.refuse(protocol, "missing_token", "no token", peer)
            return "this node requires an API token (AsyncClient(token=...), --token)"
        entry = self.tokens.find(token)
        if entry is None:
            self.refuse(protocol, "unknown_token", "a token not in the token file", peer)
            return "the token is not valid on this node"
        return self._principal(entry)

    def current(self, principal: Principal) -> Principal | None:
        """``principal`` as the token file now says (None: its token was removed)."""
        if principal.generation == self.generation:
            return principal
        if principal.digest is None or self.tokens is None:  # a member, or tokens are off
            return replace(principal, generation=self.generation)
        entry = self.tokens.find_digest(principal.digest)
        return None if entry is None else self._principal(entry)

    def reload(self) -> bool:
        """Read the token file again (SIGHUP). On a bad file the old tokens stay in force."""
        if self.token_path is None:
            log.info("event=reload_skipped reason=no_token_file")
            return False
        try:
            table = TokenTable.load(self.token_path)
        except TokenFileError as exc:
            log.error("event=tokens_reload_failed error=%r action=keeping_old_tokens", str(exc))
            return False
        self.tokens = table
        self.generation += 1
        log.info("event=tokens_reloaded file=%s tokens=%d", self.token_path, len(table))
        return True

    def refuse(self, protocol: str, reason: str, detail: str, peer: str = "?") -> None:
        """Count a refusal; log it at WARNING unless the same (protocol, reason) was logged in
        the last ``refusal_log_interval_s`` (a peer or a guesser retrying must not flood the
        log; the count says how many there were)."""
        key = (protocol, reason)
        self.refusals[key] += 1
        now = time.monotonic()
        fresh = now - self._logged.get(key, -refusal_log_interval_s) >= refusal_log_interval_s
        if fresh:
            self._logged[key] = now
        log.log(logging.WARNING if fresh else logging.DEBUG,
                "event=auth_refused protocol=%s reason=%s peer=%s count=%d detail=%r",
                protocol, reason, peer, self.refusals[key], detail)  # fmt: skip

    def admit(
        self, principal: Principal | None, kind: m.Kind, peer: str, protocol: str = "binary"
    ) -> Principal | str:
        """``principal`` (as the token file now says) if it may send ``kind``, else the
        refusal's message (counted)."""
        if principal is not None and principal.generation != self.generation:
            principal = self.current(principal)  # the token file was reloaded since
        if principal is None:
            self.refuse(protocol, "revoked_token", "a token removed from the file", peer)
            return "the token was revoked"
        if kind in principal.kinds:
            return principal
        return self.forbid(protocol, principal, kind, peer)

    def forbid(self, protocol: str, principal: Principal, kind: m.Kind, peer: str = "?") -> str:
        """The refusal of a request its principal's role does not allow (counted)."""
        needed = REQUIRED[kind]
        assert needed is not None
        self.refuse(
            protocol, "role", f"{principal.name} ({principal.role.value}) {kind.name}", peer
        )
        return (
            f"token {principal.name!r} has role {principal.role.value}; "
            f"{kind.name} needs role {needed.value}"
        )

    def session(self, peer: str) -> HelloGate:
        return HelloGate(self, peer)


class HelloGate:
    """One connection's HELLOs (the state table at the top of this file)."""

    __slots__ = ("_gate", "_pending", "peer")

    def __init__(self, gate: Gatekeeper, peer: str) -> None:
        self._gate = gate
        self.peer = peer
        self._pending: tuple[int, bool, bytes, bytes] | None = None  # (id, link, nonces)

    def hello(self, msg: m.Hello) -> Verdict:
        gate = self._gate
        if msg.peer_node_id is not None and msg.member_id is not None:
            return self._refused("bad_hello", "a HELLO names either peer_node_id or member_id")
        member = msg.peer_node_id if msg.peer_node_id is not None else msg.member_id
        if member is None:
            self._pending = None
            outcome = gate.bearer(msg.token, "binary", self.peer)
            if isinstance(outcome, str):
                return Verdict(refusal=outcome)
            return Verdict(principal=outcome)
        link = msg.peer_node_id is not None
        secret = gate.secret
        if secret is None:
            if msg.nonce is not None:
                return self._refused(
                    "no_secret", f"node {gate.node_id} has no cluster secret; the peer has one"
                )
            if gate.tokens_required:  # never: a member would skip the tokens (exposure.py)
                return self._refused("no_secret", "members need a cluster secret here")
            return Verdict(principal=MEMBER)  # an unauthenticated cluster (docs/security.md)
        if msg.proof is None:
            if msg.nonce is None:
                return self._refused(
                    "missing_proof",
                    f"node {gate.node_id} requires cluster members to prove the cluster "
                    "secret (--cluster-secret-file)",
                )
            server_nonce = cs.new_nonce()
            self._pending = (member, link, msg.nonce, server_nonce)
            proof = cs.proof(
                cs.WELCOME, secret, gate.node_id, member, link, msg.nonce, server_nonce
            )
            return Verdict(challenge=server_nonce, proof=proof)
        pending, self._pending = self._pending, None  # a challenge is answered once
        if pending is None or pending[:3] != (member, link, msg.nonce):
            return self._refused("bad_proof", "a proof without its challenge")
        client_nonce, server_nonce = pending[2], pending[3]
        expected = cs.proof(
            cs.HELLO, secret, gate.node_id, member, link, client_nonce, server_nonce
        )
        if not hmac.compare_digest(expected, msg.proof):
            return self._refused("bad_proof", f"node {member} does not hold this cluster's secret")
        log.info("event=member_authenticated node=%d link=%s peer=%s", member, link, self.peer)
        return Verdict(principal=MEMBER)

    def closed(self) -> None:
        """The connection ended; a challenge it never answered is counted (a node with
        another secret stops there, and so does a prober)."""
        if self._pending is not None:
            member = self._pending[0]
            self._refused("unanswered_challenge", f"node {member} left without proving")

    def _refused(self, reason: str, message: str) -> Verdict:
        self._pending = None
        self._gate.refuse("binary", reason, message, self.peer)
        return Verdict(refusal=message)


def load_gatekeeper(node_id: int, token_path: str | None, secret_path: str | None) -> Gatekeeper:
    """The gatekeeper of a node's flags (raises ``TokenFileError``/``SecretFileError``)."""
    tokens = TokenTable.load(token_path) if token_path else None
    secret = cs.load_secret(secret_path) if secret_path else None
    if secret_path and cs.readable_by_others(secret_path):
        log.warning("event=secret_file_readable file=%s hint=chmod_600", secret_path)
    if token_path and Path(token_path).exists() and cs.readable_by_others(token_path):
        log.info("event=token_file_readable file=%s note=hashes_only", token_path)
    return Gatekeeper(node_id, tokens=tokens, token_path=token_path, secret=secret)


__all__ = ["MEMBER", "OPEN", "Gatekeeper", "HelloGate", "Principal", "Verdict", "digest_of"]
