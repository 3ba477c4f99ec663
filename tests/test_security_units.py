"""The pure parts of ``unimeter/security``: the token file, the role table, the exposure rules
and the cluster secret handshake, driven in process (both sides, no sockets)."""

from __future__ import annotations

import dataclasses
import hmac

import pytest

from unimeter.errors import AuthError
from unimeter.security import tokens as tokens_module
from unimeter.security.cluster_secret import MemberGreeting
from unimeter.security.exposure import exposure_problem, is_loopback
from unimeter.security.gate import MEMBER, Gatekeeper
from unimeter.security.roles import Role, parse_role
from unimeter.security.tokens import TokenFileError, TokenTable, digest_of, entry_for, new_token
from unimeter.wire import messages as m

HASH = "sha256:" + "ab" * 32


# --------------------------------------------------------------------------- the token file

BAD_LINES = [
    ("umt_rawtoken ingest svc", "by its hash"),
    ("sha256:abc ingest svc", "by its hash"),
    (f"{HASH} ingest", "expected 'sha256:<hex> ROLE NAME'"),
    (f"{HASH} ingest svc extra", "expected 'sha256:<hex> ROLE NAME'"),
    (f"{HASH} member svc", "role must be one of"),
    (f"{HASH} root svc", "role must be one of"),
    (f"{HASH} read bad/name", "a name is"),
    (f"{HASH} read svc\n{HASH} admin other", "listed twice"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_LINES)
def test_a_bad_token_file_names_its_line(text: str, problem: str) -> None:
    with pytest.raises(TokenFileError, match=problem) as caught:
        TokenTable.parse("# header\n\n" + text, "tokens.txt")
    assert "tokens.txt:3" in str(caught.value) or "tokens.txt:4" in str(caught.value)


def test_a_token_file_lists_hashes_and_finds_tokens() -> None:
    made = {role: new_token() for role in ("ingest", "read", "admin")}
    lines = [entry_for(t, Role(r), f"{r}-svc").line() for r, t in made.items()]
    table = TokenTable.parse("\n".join(["# comment", *lines, "  # indented comment", ""]))
    assert len(table) == 3
    for role, token in made.items():
        assert token not in "\n".join(lines)  # never the token itself
        entry = table.find(token)
        assert entry is not None and entry.role is Role(role) and entry.name == f"{role}-svc"
    assert table.find(new_token()) is None
    assert table.find(made["read"] + "x") is None
    assert table.find_digest(digest_of(made["admin"])) is table.find(made["admin"])


def test_finding_a_token_compares_every_entry_whichever_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = [new_token() for _ in range(5)]
    table = TokenTable.parse(
        "\n".join(entry_for(t, Role.READ, f"n{i}").line() for i, t in enumerate(made))
    )
    calls: list[int] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return original(a, b)

    monkeypatch.setattr(tokens_module.hmac, "compare_digest", counting)
    for token in [*made, new_token()]:
        calls.clear()
        table.find(token)
        assert len(calls) == len(made), "the time taken must not say which entry matched"


def test_roles() -> None:
    assert parse_role(" Admin ") is Role.ADMIN
    for bad in ("member", "", "owner"):
        with pytest.raises(ValueError, match="role must be one of"):
            parse_role(bad)
    with pytest.raises(ValueError, match="member role"):
        entry_for(new_token(), Role.MEMBER, "x")


# --------------------------------------------------------------------------- safe defaults

EXPOSURE = [
    # hosts, peer hosts, tokens, secret, insecure -> the refusal names (None: starts)
    (["127.0.0.1"], [], False, False, False, None),
    (["localhost", "::1"], [], False, False, False, None),
    (["0.0.0.0"], [], False, False, False, "--auth-tokens"),
    (["127.0.0.1", "10.0.0.5"], [], False, False, False, "10.0.0.5"),
    (["db.example"], [], False, False, False, "--auth-tokens"),
    (["0.0.0.0"], [], False, False, True, None),
    (["0.0.0.0"], [], True, False, False, None),
    (["127.0.0.1"], ["127.0.0.1"], False, False, False, None),
    (["127.0.0.1"], ["127.0.0.1"], True, False, False, "--cluster-secret-file"),
    (["127.0.0.1"], ["127.0.0.1"], True, True, False, None),
    (["10.0.0.1"], ["10.0.0.2"], True, False, True, "--cluster-secret-file"),
    (["10.0.0.1"], ["10.0.0.2"], True, True, False, None),
    (["127.0.0.1"], ["10.0.0.2"], False, False, False, "over 10.0.0.2"),
    (["127.0.0.1"], ["10.0.0.2"], False, False, True, None),
]


@pytest.mark.parametrize(("hosts", "peers", "tokens", "secret", "insecure", "refusal"), EXPOSURE)
def test_exposure_rules(
    hosts: list[str],
    peers: list[str],
    tokens: bool,
    secret: bool,
    insecure: bool,
    refusal: str | None,
) -> None:
    problem = exposure_problem(
        hosts=hosts, peer_hosts=peers, tokens=tokens, secret=secret, insecure=insecure
    )
    if refusal is None:
        assert problem is None
    else:
        assert problem is not None and refusal in problem


def test_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "LOCALHOST"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.1.1.1", "example.com", ""]))


# --------------------------------------------------------------------------- cluster secret

SECRET = b"s" * 32


def _handshake(
    server_secret: bytes | None,
    member_secret: bytes | None,
    *,
    link: bool = True,
    server_id: int = 1,
    member_id: int = 2,
) -> tuple[Gatekeeper, object]:
    """One handshake, in process; the outcome: MEMBER, or the refusal (a str from the
    server, an AuthError from the dialler)."""
    gate = Gatekeeper(server_id, secret=server_secret)
    session = gate.session("test")
    greeting = MemberGreeting(member_secret, member_id, link=link, client_name="n")
    verdict = session.hello(greeting.first())
    if verdict.refusal is not None:
        return gate, verdict.refusal
    if verdict.principal is not None:
        return gate, verdict.principal
    welcome = m.Welcome(
        node_id=server_id, cluster_id="c", version=m.PROTOCOL_VERSION, limits={}, partitions=1,
        challenge=verdict.challenge, proof=verdict.proof,
    )  # fmt: skip
    try:
        second = greeting.second(welcome)
    except AuthError as exc:
        return gate, exc
    assert second is not None
    final = session.hello(second)
    return gate, final.refusal if final.refusal is not None else final.principal


@pytest.mark.parametrize("link", [True, False])
def test_the_same_secret_makes_a_member(link: bool) -> None:
    gate, outcome = _handshake(SECRET, SECRET, link=link)
    assert outcome is MEMBER
    assert not gate.refusals


def test_a_different_secret_is_refused_by_the_dialler_before_it_proves_anything() -> None:
    _, outcome = _handshake(SECRET, b"t" * 32)
    assert isinstance(outcome, AuthError) and "different cluster secret" in outcome.message


def test_a_member_without_the_secret_is_refused_and_counted() -> None:
    gate, outcome = _handshake(SECRET, None)
    assert isinstance(outcome, str) and "prove the cluster secret" in outcome
    assert gate.refusals[("binary", "missing_proof")] == 1


def test_a_node_without_a_secret_refuses_one_that_has_one() -> None:
    _, outcome = _handshake(None, SECRET)
    assert isinstance(outcome, str) and "no cluster secret" in outcome


def test_with_tokens_and_no_secret_no_member_is_admitted() -> None:
    gate = Gatekeeper(1, tokens=TokenTable.parse(""), secret=None)
    hello = m.Hello(version=m.PROTOCOL_VERSION, client_name="n", peer_node_id=2)
    assert gate.session("a").hello(hello).refusal is not None
    assert Gatekeeper(1).session("a").hello(hello).principal is MEMBER  # no tokens: open


def test_a_wrong_proof_is_refused_and_a_recorded_one_does_not_open_another_session() -> None:
    gate = Gatekeeper(1, secret=SECRET)
    greeting = MemberGreeting(SECRET, 2, link=True, client_name="n")
    session = gate.session("a")
    verdict = session.hello(greeting.first())
    welcome = m.Welcome(
        node_id=1, cluster_id="c", version=m.PROTOCOL_VERSION, limits={}, partitions=1,
        challenge=verdict.challenge, proof=verdict.proof,
    )  # fmt: skip
    proving = greeting.second(welcome)
    assert proving is not None and proving.proof is not None
    forged = dataclasses.replace(proving, proof=bytes(32))
    assert session.hello(forged).refusal is not None
    # Replayed on a fresh connection (which challenges with a new nonce): refused.
    other = gate.session("b")
    other.hello(greeting.first())
    assert other.hello(proving).refusal is not None
    # A proof made for node 2 does not let the same connection claim to be node 3.
    third = gate.session("c")
    third.hello(greeting.first())
    assert third.hello(dataclasses.replace(proving, peer_node_id=3)).refusal is not None
    assert gate.refusals[("binary", "bad_proof")] >= 3


def test_a_welcome_proof_cannot_be_reflected_as_a_hello_proof() -> None:
    gate = Gatekeeper(1, secret=SECRET)
    session = gate.session("a")
    nonce = b"n" * 32
    hello = m.Hello(version=m.PROTOCOL_VERSION, client_name="x", peer_node_id=2, nonce=nonce)
    verdict = session.hello(hello)
    assert verdict.proof is not None
    reflected = dataclasses.replace(hello, proof=verdict.proof)
    assert session.hello(reflected).refusal is not None


def test_the_dialler_checks_which_node_answered() -> None:
    greeting = MemberGreeting(SECRET, 2, link=True, client_name="n", expect_node=3)
    welcome = m.Welcome(
        node_id=1, cluster_id="c", version=m.PROTOCOL_VERSION, limits={}, partitions=1
    )
    with pytest.raises(AuthError, match="expected node 3"):
        greeting.second(welcome)
