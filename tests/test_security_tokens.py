"""API tokens against a real node: every role against every request kind, on the binary
protocol and on HTTP; refusals are ``AuthError`` (not retried) and counted in ``/metrics``.

The expected grants are written out here as the product promises them, not read from
``unimeter/security/roles.py``: the test is the oracle the table is checked against.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.http import Http
from tests.support.nodeproc import NodeProcess
from tests.support.security import Tokens, write_tokens
from unimeter import AsyncClient, current_month
from unimeter.client.connection import Connection
from unimeter.errors import AuthError, UnavailableError, UnimeterError
from unimeter.model import AggType, AlertRecord, DeliveryMode, Event, MetricSchema
from unimeter.peer import peer_frame
from unimeter.routing import partition_of
from unimeter.security.roles import Role
from unimeter.security.tokens import entry_for, new_token
from unimeter.wire import messages as m

K = m.Kind
PARTITIONS = 4
ACCOUNT = 7
PART = partition_of(ACCOUNT, PARTITIONS)

READS = {
    K.GET_PARTITION_MAP, K.METRIC_GET, K.METRIC_LIST, K.QUERY, K.QUERY_REALTIME,
    K.QUERY_BREAKDOWN, K.LIST_EVENTS, K.LIST_ALERTS, K.CLUSTER_STATUS, K.SUBSCRIBE_ALERTS,
    K.UNSUBSCRIBE_ALERTS,
}  # fmt: skip
ALLOWED: dict[str, set[m.Kind]] = {
    "ingest": {K.GET_PARTITION_MAP, K.INGEST},
    "read": READS,
    "admin": {k for k in K if k not in (K.HELLO, K.PEER)},
}
REQUEST_KINDS = sorted(k for k in K if k not in (K.HELLO, K.PEER))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, Tokens]]:
    root = tmp_path_factory.mktemp("tokens")
    tokens = write_tokens(root / "tokens")
    node = NodeProcess(root / "data", partitions=PARTITIONS, http=True, extra_args=tokens.args)
    node.start()
    try:
        yield node, tokens
    finally:
        node.kill()


class _Sink:
    def push(self, message: object) -> None:
        pass

    def lost(self, failure: UnimeterError) -> None:
        pass


def _hello(token: str | None) -> m.Hello:
    return m.Hello(version=m.PROTOCOL_VERSION, client_name="test-roles", token=token)


async def _open(node: NodeProcess, token: str | None) -> Connection:
    connection = Connection(node.address)
    await connection.open(_hello(token), asyncio.get_running_loop().time() + 10)
    return connection


def _batch(event_id: str) -> m.EventBatch:
    return m.EventBatch(
        metric_codes=("base",), metric_index=[0], account_ids=[ACCOUNT], values=[3],
        timestamps=[int(time.time() * 1e6)], event_ids=[event_id],
    )  # fmt: skip


def _requests(role: str, connection: Connection, version: int) -> dict[m.Kind, m.Request]:
    now = int(time.time() * 1e6)
    window = {"start_us": now - 10**9, "end_us": now + 10**9}
    base = MetricSchema(code="base", agg_type=AggType.SUM)
    return {
        K.GET_PARTITION_MAP: m.GetPartitionMap(),
        K.METRIC_CREATE: m.MetricCreate(
            schema=MetricSchema(code=f"made_by_{role}", agg_type=AggType.COUNT)
        ),
        K.METRIC_UPDATE: m.MetricUpdate(schema=base),
        K.METRIC_GET: m.MetricGet(code="base"),
        K.METRIC_LIST: m.MetricList(),
        K.METRIC_DELETE: m.MetricDelete(code=f"doomed_{role}"),
        K.INGEST: m.Ingest(
            partition=PART,
            producer_id=hash(role) & 0xFFFF_FFFF,
            seq=1,
            sync=True,
            catalog_version=version,
            batch=_batch(f"by-{role}"),
        ),
        K.QUERY: m.Query(partition=PART, account_id=ACCOUNT, metric_code="base", **window),
        K.QUERY_REALTIME: m.QueryRealtime(partition=PART, account_id=ACCOUNT, metric_code="base"),
        K.QUERY_BREAKDOWN: m.QueryBreakdown(
            partition=PART, account_id=ACCOUNT, metric_code="base", group_by=(), **window
        ),
        K.LIST_EVENTS: m.ListEvents(
            partition=PART, account_id=ACCOUNT, since_us=0, until_us=now + 10**9
        ),
        K.LIST_ALERTS: m.ListAlerts(partition=PART, account_id=ACCOUNT),
        K.CLUSTER_STATUS: m.ClusterStatus(),
        K.SUBSCRIBE_ALERTS: m.SubscribeAlerts(
            partition=PART, subscription_id=connection.open_stream(_Sink())
        ),
        K.UNSUBSCRIBE_ALERTS: m.UnsubscribeAlerts(subscription_id=1),
    }


async def _when_serving(call: Callable[[], Awaitable[object]]) -> object:
    """``call()`` once the node serves: a node just started answers "starting" until its
    partitions have leaders (the module's first request can come that early)."""
    for _ in range(200):
        try:
            return await call()
        except UnavailableError:
            await asyncio.sleep(0.05)
    return await call()


@pytest.mark.parametrize("role", ["ingest", "read", "admin"])
async def test_every_role_against_every_binary_request_kind(
    secured: tuple[NodeProcess, Tokens], role: str
) -> None:
    node, tokens = secured
    admin = await _open(node, tokens.by_role["admin"])
    try:
        deadline = asyncio.get_running_loop().time() + 20
        created = await _when_serving(
            lambda: admin.request(
                m.MetricCreate(schema=MetricSchema(code="base", agg_type=AggType.SUM)), deadline
            )
        )
        doomed = MetricSchema(code=f"doomed_{role}", agg_type=AggType.SUM)
        await admin.request(m.MetricCreate(schema=doomed), deadline)
        assert isinstance(created, m.SchemaReply)
        connection = await _open(node, tokens.by_role[role])
        try:
            requests = _requests(role, connection, created.catalog_version + 1)
            assert set(requests) == set(REQUEST_KINDS)
            for kind in REQUEST_KINDS:
                if kind in ALLOWED[role]:
                    reply = await connection.request(requests[kind], deadline)
                    assert not isinstance(reply, m.ErrorReply), (role, kind, reply)
                else:
                    with pytest.raises(AuthError, match=f"role {role}"):
                        await connection.request(requests[kind], deadline)
        finally:
            await connection.close()
        # What was allowed took effect; what was refused did not.
        listed = await admin.request(m.MetricList(), deadline)
        assert isinstance(listed, m.SchemaList)
        codes = {s.code for s in listed.schemas}
        assert (f"made_by_{role}" in codes) == (role == "admin")
        assert (f"doomed_{role}" in codes) == (role != "admin")
        events = await admin.request(
            m.ListEvents(partition=PART, account_id=ACCOUNT, since_us=0, until_us=2**62),
            deadline,
        )
        assert isinstance(events, m.EventsPage)
        assert (f"by-{role}" in {e.event_id for e in events.events}) == (role != "read")
    finally:
        await admin.close()


async def test_a_token_may_not_send_raft_messages(secured: tuple[NodeProcess, Tokens]) -> None:
    node, tokens = secured
    host, port = node.address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        from unimeter.wire.codec import ClientCodec

        codec = ClientCodec()
        writer.write(codec.encode_request(1, _hello(tokens.by_role["admin"])))
        await writer.drain()
        while (frame := codec.next_frame()) is None:
            codec.feed(await asyncio.wait_for(reader.read(65536), 10))
        assert frame.status == 0
        writer.write(peer_frame([b"\x80"]))  # a Raft message from a token holder
        await writer.drain()
        assert await asyncio.wait_for(reader.read(65536), 10) == b""  # closed at once
    finally:
        writer.close()
        await writer.wait_closed()
    text = await _scrape(node, tokens)
    assert 'unimeter_auth_refusals_total{protocol="binary",reason="not_a_member"}' in text


@pytest.mark.parametrize("token", [None, "umt_not-a-real-token"])
async def test_missing_or_unknown_token_fails_at_once_and_is_not_retried(
    secured: tuple[NodeProcess, Tokens], token: str | None
) -> None:
    node, _ = secured
    started = time.monotonic()
    client = AsyncClient([node.address], token=token, request_timeout=20)
    with pytest.raises(AuthError) as caught:
        async with client:
            await client.metrics.list()
    assert not caught.value.retriable
    assert time.monotonic() - started < 5, "an auth refusal must not be retried until timeout"


async def _scrape(node: NodeProcess, tokens: Tokens) -> str:
    async with Http(node.http_url) as http:
        answer = await http.get(
            "/metrics", headers={"Authorization": f"Bearer {tokens.by_role['read']}"}
        )
        assert answer.status == 200, answer
        return answer.raw.decode()


def _counter(text: str, protocol: str, reason: str) -> float:
    prefix = f'unimeter_auth_refusals_total{{protocol="{protocol}",reason="{reason}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def test_refusals_are_counted_in_metrics(secured: tuple[NodeProcess, Tokens]) -> None:
    node, tokens = secured
    before = await _scrape(node, tokens)
    for token in (None, "umt_wrong", "umt_wrong"):
        with pytest.raises(AuthError):
            await _open(node, token)
    connection = await _open(node, tokens.by_role["ingest"])
    try:
        with pytest.raises(AuthError):
            await connection.request(m.MetricList(), asyncio.get_running_loop().time() + 10)
    finally:
        await connection.close()
    async with Http(node.http_url) as http:
        assert (await http.get("/v1/metrics")).status == 401
        assert (await http.get("/v1/metrics", headers={"Authorization": "Bearer x"})).status == 401
    after = await _scrape(node, tokens)
    grew = {
        (p, r): _counter(after, p, r) - _counter(before, p, r)
        for p, r in [
            ("binary", "missing_token"), ("binary", "unknown_token"), ("binary", "role"),
            ("http", "missing_token"), ("http", "unknown_token"),
        ]
    }  # fmt: skip
    assert grew == {
        ("binary", "missing_token"): 1, ("binary", "unknown_token"): 2, ("binary", "role"): 1,
        ("http", "missing_token"): 1, ("http", "unknown_token"): 1,
    }  # fmt: skip
    assert "unimeter_auth_required 1.0" in after


# --------------------------------------------------------------------------- HTTP

Call = Callable[[Http, dict[str, str], str], Awaitable[int]]


def _http_calls() -> dict[str, tuple[str | None, Call]]:
    """Route name -> (the role it needs, or None: public; one call returning its status)."""
    now = datetime.now(UTC).isoformat()

    async def get(http: Http, headers: dict[str, str], path: str) -> int:
        return (await http.get(path, headers=headers)).status

    def at(path: str) -> Call:
        return lambda http, headers, role: get(http, headers, path)

    async def ingest(http: Http, headers: dict[str, str], role: str) -> int:
        event = {"account_id": ACCOUNT, "metric_code": "base", "value": 1,
                 "event_id": f"http-{role}", "timestamp": now}  # fmt: skip
        return (await http.post("/v1/events", json=[event], headers=headers)).status

    async def create(http: Http, headers: dict[str, str], role: str) -> int:
        body = {"code": f"http_made_{role}", "agg_type": "count"}
        return (await http.post("/v1/metrics", json=body, headers=headers)).status

    async def update(http: Http, headers: dict[str, str], role: str) -> int:
        body = {"code": "base", "agg_type": "sum"}
        return (await http.request("PUT", "/v1/metrics/base", json=body, headers=headers)).status

    async def delete(http: Http, headers: dict[str, str], role: str) -> int:
        return (await http.request("DELETE", f"/v1/metrics/http_doomed_{role}",
                                   headers=headers)).status  # fmt: skip

    async def stream(http: Http, headers: dict[str, str], role: str) -> int:
        async with http.session.get(
            http.base + f"/v1/alerts/stream?account_id={ACCOUNT}", headers=headers
        ) as response:
            return response.status

    usage = f"/v1/usage?account_id={ACCOUNT}&metric_code=base&period=current_month"
    return {
        "health": (None, at("/health")),
        "openapi": (None, at("/v1/openapi.json")),
        "metrics": ("read", at("/metrics")),
        "ingest": ("ingest", ingest),
        "list_events": ("read", at(f"/v1/events?account_id={ACCOUNT}")),
        "usage": ("read", at(usage)),
        "usage_realtime": (
            "read",
            at(f"/v1/usage/realtime?account_id={ACCOUNT}&metric_code=base"),
        ),
        "metric_list": ("read", at("/v1/metrics")),
        "metric_create": ("admin", create),
        "metric_get": ("read", at("/v1/metrics/base")),
        "metric_update": ("admin", update),
        "metric_delete": ("admin", delete),
        "list_alerts": ("read", at(f"/v1/alerts?account_id={ACCOUNT}")),
        "alert_stream": ("read", stream),
        "cluster_status": ("read", at("/v1/cluster")),
    }


def test_every_http_route_is_in_the_table() -> None:
    from unimeter.node import Node, NodeConfig
    from unimeter.security.roles import HTTP_KIND
    from unimeter.server.http import HttpServer

    app = HttpServer(Node(NodeConfig())).app()
    names = {r.name for r in app.router.routes() if r.name is not None}
    assert names == set(HTTP_KIND) == set(_http_calls())


@pytest.mark.parametrize("role", [None, "ingest", "read", "admin"])
async def test_every_role_against_every_http_route(
    secured: tuple[NodeProcess, Tokens], role: str | None
) -> None:
    node, tokens = secured
    admin = {"Authorization": f"Bearer {tokens.by_role['admin']}"}
    headers = {} if role is None else {"Authorization": f"Bearer {tokens.by_role[role]}"}
    async with Http(node.http_url) as http:
        base = {"code": "base", "agg_type": "sum"}
        assert (await http.post("/v1/metrics", json=base, headers=admin)).status == 201
        doomed = {"code": f"http_doomed_{role}", "agg_type": "sum"}
        assert (await http.post("/v1/metrics", json=doomed, headers=admin)).status == 201
    outcomes: dict[str, Any] = {}
    for name, (_, call) in _http_calls().items():
        # Each call first on its own connection: ingest and usage reach the fast lane (the
        # first request the fast lane does not serve hands its connection to aiohttp).
        async with Http(node.http_url) as fresh:
            outcomes[name] = await call(fresh, headers, str(role))
    async with Http(node.http_url) as http:
        expected = {}
        for name, (needed, _) in _http_calls().items():
            granted = needed is None or (role is not None and (role == "admin" or role == needed))
            expected[name] = "ok" if granted else (401 if role is None else 403)
        seen = {n: "ok" if 200 <= s < 300 else s for n, s in outcomes.items()}
        assert seen == expected
        refused = await http.get("/v1/metrics")
        assert refused.headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert refused.problem_code == "AUTH"


async def test_usage_read_from_its_row_is_authorised(secured: tuple[NodeProcess, Tokens]) -> None:
    # A calendar-month metric with stored usage: the fast lane answers its usage read from the
    # row, without waiting; the same tokens and roles apply there.
    node, tokens = secured
    bearer = {role: {"Authorization": f"Bearer {t}"} for role, t in tokens.by_role.items()}
    usage = f"/v1/usage?account_id={ACCOUNT}&metric_code=monthly&period=current_month"
    async with Http(node.http_url) as http:
        schema = {"code": "monthly", "agg_type": "sum", "period_type": "calendar"}
        assert (await http.post("/v1/metrics", json=schema, headers=bearer["admin"])).status == 201
    async with Http(node.http_url) as http:  # a fresh connection: the fast lane's
        event = {"account_id": ACCOUNT, "metric_code": "monthly", "value": 5}
        stored = await http.post("/v1/events?delivery=sync", json=[event], headers=bearer["ingest"])
        assert stored.status == 200 and stored.body["n_stored"] == 1
        assert (await http.get(usage, headers=bearer["read"])).body["value"]["sum"] == 5
        assert (await http.get(usage, headers=bearer["ingest"])).status == 403
        refused = await http.get(usage)
        assert refused.status == 401 and refused.problem_code == "AUTH"
        assert refused.headers.get("WWW-Authenticate", "").startswith("Bearer")


# --------------------------------------------------------------------------- the client and CLI


async def test_an_ingest_token_records_and_a_read_token_reads(
    secured: tuple[NodeProcess, Tokens],
) -> None:
    node, tokens = secured
    async with AsyncClient([node.address], token=tokens.by_role["admin"]) as admin:
        await admin.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
    async with AsyncClient([node.address], token=tokens.by_role["ingest"]) as writer:
        result = await writer.ingest(
            [Event(account_id=41, metric_code="calls", value=5, event_id="c-1")],
            delivery=DeliveryMode.SYNC,
        )
        assert result.n_stored == 1
        with pytest.raises(AuthError):
            await writer.query(41, "calls", current_month())
    async with AsyncClient([node.address], token=tokens.by_role["read"]) as reader:
        assert (await reader.query(41, "calls", current_month())).value.sum == 5
        alerts: list[AlertRecord] = await reader.list_alerts(41)
        assert alerts == []
        with pytest.raises(AuthError):
            await reader.ingest([Event(account_id=41, metric_code="calls", value=1)])


def _cli(
    node: NodeProcess, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "UNIMETER_TOKEN"}
    if token is not None:
        env["UNIMETER_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "unimeter.cli", "--node", node.address, *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip


def test_the_cli_sends_its_token(secured: tuple[NodeProcess, Tokens]) -> None:
    node, tokens = secured
    refused = _cli(node, "metrics", "list")
    assert refused.returncode == 1 and "requires an API token" in refused.stderr
    by_flag = _cli(node, "--token", tokens.by_role["read"], "--json", "metrics", "list")
    assert by_flag.returncode == 0, by_flag.stderr
    assert "base" in {m["code"] for m in json.loads(by_flag.stdout)}
    by_env = _cli(node, "status", token=tokens.by_role["read"])
    assert by_env.returncode == 0 and "up" in by_env.stdout, by_env.stderr
    wrong_role = _cli(node, "metrics", "delete", "base", token=tokens.by_role["read"])
    assert wrong_role.returncode == 1 and "needs role admin" in wrong_role.stderr


# --------------------------------------------------------------------------- reload on SIGHUP


async def _wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)


async def test_sighup_reloads_the_token_file(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens", roles=("read", "admin"))
    node = NodeProcess(tmp_path / "data", extra_args=tokens.args).start()
    try:
        assert node.proc is not None
        kept = await _open(node, tokens.by_role["read"])  # stays open across the reloads
        deadline = asyncio.get_running_loop().time() + 30
        try:
            await kept.request(m.MetricList(), deadline)
            fresh = new_token()
            lines = tokens.path.read_text().splitlines()
            revoked = [line for line in lines if not line.endswith(" read-token")]
            added = entry_for(fresh, Role.INGEST, "late-ingest").line()
            tokens.path.write_text("\n".join([*revoked, added]) + "\n")
            os.kill(node.proc.pid, signal.SIGHUP)

            async def fresh_token_works() -> bool:
                try:
                    await (await _open(node, fresh)).close()
                except AuthError:
                    return False
                return True

            await _wait_for(fresh_token_works)
            # The connection that used the removed token was closed by the node (its live
            # subscriptions with it); saying HELLO again with that token is refused.
            with pytest.raises(UnavailableError):
                await kept.request(m.MetricList(), deadline)
            with pytest.raises(AuthError):
                await _open(node, tokens.by_role["read"])
            assert "reason=token_revoked token=read-token" in node.log()

            # A broken file on reload keeps the tokens in force (and says so in the log).
            tokens.path.write_text("sha256:nothex ingest broken\n")
            os.kill(node.proc.pid, signal.SIGHUP)
            await _wait_for(lambda: _logged(node, "tokens_reload_failed"))
            await (await _open(node, fresh)).close()
            await (await _open(node, tokens.by_role["admin"])).close()
        finally:
            await kept.close()
        assert node.terminate() == 0
    finally:
        node.kill()


async def _logged(node: NodeProcess, text: str) -> bool:
    return text in node.log()
