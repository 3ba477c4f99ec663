"""The HTTP/JSON API against a real node, through a real HTTP client (aiohttp).

Every answer is compared with what the binary protocol (``AsyncClient``) says about the same
data, so both protocols are seen to mean the same thing.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta

from tests.support.http import Http, ndjson
from tests.support.nodeproc import NodeProcess
from unimeter import AsyncClient, current_month


async def test_metrics_crud(http_node: NodeProcess) -> None:
    schema = {
        "code": "compute_seconds",
        "agg_type": "sum",
        "filters": [{"key": "provider", "values": ["aws", "gcp"]}],
        "thresholds": [{"code": "free_tier", "value": 10_000}],
    }
    async with Http(http_node.http_url) as http:
        created = await http.post("/v1/metrics", json=schema)
        assert created.status == 201, created
        assert created.body["agg_type"] == "sum"
        assert created.body["period_type"] == "fixed"
        # A retried create of the same schema is safe; a different one is a conflict.
        assert (await http.post("/v1/metrics", json=schema)).status == 201
        conflict = await http.post("/v1/metrics", json={**schema, "agg_type": "max"})
        assert (conflict.status, conflict.problem_code) == (409, "ALREADY_EXISTS")

        got = await http.ok("GET", "/v1/metrics/compute_seconds")
        assert got == created.body
        updated = await http.ok(
            "PUT",
            "/v1/metrics/compute_seconds",
            json={**schema, "thresholds": [{"code": "big", "value": 5, "recurring": True}]},
        )
        assert updated["thresholds"] == [{"code": "big", "value": 5, "recurring": True}]
        listed = await http.ok("GET", "/v1/metrics")
        assert [m["code"] for m in listed["metrics"]] == ["compute_seconds"]

        async with AsyncClient([http_node.address]) as client:  # the binary view agrees
            same = await client.metrics.get("compute_seconds")
            assert [t.code for t in same.thresholds] == ["big"]

        deleted = await http.request("DELETE", "/v1/metrics/compute_seconds")
        assert deleted.status == 200 and deleted.body["deleted"] == "compute_seconds"
        gone = await http.get("/v1/metrics/compute_seconds")
        assert (gone.status, gone.problem_code) == (404, "NOT_FOUND")
        again = await http.request("DELETE", "/v1/metrics/compute_seconds")
        assert again.problem_code == "NOT_FOUND"
        mismatch = await http.request("PUT", "/v1/metrics/a", json={**schema, "code": "b"})
        assert mismatch.problem_code == "INVALID_REQUEST" and "differs" in mismatch.body["detail"]


async def test_ingest_and_usage_agree_with_the_binary_protocol(http_node: NodeProcess) -> None:
    async with Http(http_node.http_url) as http:
        await http.ok("POST", "/v1/metrics", json={"code": "api_calls", "agg_type": "count"})
        await http.ok(
            "POST",
            "/v1/metrics",
            json={
                "code": "compute",
                "agg_type": "sum",
                "filters": [
                    {"key": "provider", "values": ["aws", "gcp"]},
                    {"key": "region", "values": ["eu", "us"]},
                ],
            },
        )
        # A JSON array, SYNC: every event of 20 accounts, spread over the partitions.
        array = [{"account_id": a, "metric_code": "api_calls"} for a in range(20) for _ in range(3)]
        result = await http.ok("POST", "/v1/events", json=array, params={"delivery": "sync"})
        assert result == {
            "n_stored": 60, "n_duplicates": 0, "n_rejected": 0, "rejected": [],
            "last_offset": result["last_offset"],
        }  # fmt: skip
        # NDJSON, with dimensions, an event id, and two events the partition refuses.
        now = datetime.now(UTC)
        lines = [
            {"account_id": 7, "metric_code": "compute", "value": 5,
             "properties": {"provider": "aws", "region": "eu"}, "event_id": "job-1"},
            {"account_id": 7, "metric_code": "compute", "value": 11,
             "properties": {"provider": "gcp", "region": "eu"}},
            {"account_id": 7, "metric_code": "compute", "value": 13,
             "properties": {"provider": "aws", "region": "us"}},
            {"account_id": 7, "metric_code": "no_such_metric", "value": 1},
            {"account_id": 7, "metric_code": "compute", "value": 1,
             "timestamp": (now + timedelta(hours=1)).isoformat()},
        ]  # fmt: skip
        result = await http.ok("POST", "/v1/events", body=b"\n" + ndjson(lines) + b"\n\n")
        assert (result["n_stored"], result["n_rejected"]) == (3, 2)
        assert [(r["index"], r["reason"], r["metric_code"]) for r in result["rejected"]] == [
            (3, "unknown_metric", "no_such_metric"),
            (4, "timestamp_in_future", "compute"),
        ]
        # The same event id again (another request) is a duplicate, never counted twice.
        again = await http.ok("POST", "/v1/events", body=ndjson(lines[:1]))
        assert (again["n_stored"], again["n_duplicates"]) == (0, 1)

        usage = await http.ok("GET", "/v1/usage", params={"account_id": 7, "metric": "compute"})
        assert usage["value"]["sum"] == 29 and usage["value"]["count"] == 3
        aws = await http.ok(
            "GET",
            "/v1/usage",
            params=[("account_id", "7"), ("metric", "compute"), ("filter", "provider=aws")],
        )
        assert aws["value"]["sum"] == 18
        both = await http.ok(
            "GET",
            "/v1/usage",
            params=[("account_id", "7"), ("metric", "compute"), ("filter", "provider=aws"),
                    ("filter", "region=us")],
        )  # fmt: skip
        assert both["value"]["sum"] == 13
        month = current_month()
        ranged = await http.ok(
            "GET",
            "/v1/usage",
            params={"account_id": 7, "metric": "compute", "group_by": "provider",
                    "from": month.start.isoformat(), "to": month.end.isoformat()},
        )  # fmt: skip
        assert {tuple(g["group"].items()): g["value"]["sum"] for g in ranged["groups"]} == {
            (("provider", "aws"),): 18,
            (("provider", "gcp"),): 11,
        }
        realtime = await http.ok(
            "GET", "/v1/usage/realtime", params={"account_id": 3, "metric": "api_calls"}
        )
        assert realtime["value"]["count"] == 3

        async with AsyncClient([http_node.address]) as client:
            for account in range(20):
                total = await client.query(account, "api_calls", current_month())
                over_http = await http.ok(
                    "GET", "/v1/usage", params={"account_id": account, "metric": "api_calls"}
                )
                assert over_http["value"]["count"] == total.value.count == 3
            breakdown = await client.query_breakdown(7, "compute", month, group_by=["provider"])
            assert {k: v.sum for k, v in breakdown.items()} == {
                frozenset({("provider", "aws")}): 18,
                frozenset({("provider", "gcp")}): 11,
            }


async def test_events_and_alerts_listing(http_node: NodeProcess) -> None:
    async with Http(http_node.http_url) as http:
        await http.ok(
            "POST",
            "/v1/metrics",
            json={"code": "calls", "agg_type": "count",
                  "thresholds": [{"code": "every_two", "value": 2, "recurring": True}]},
        )  # fmt: skip
        events = [{"account_id": 5, "metric_code": "calls", "event_id": f"e{i}"} for i in range(5)]
        await http.ok("POST", "/v1/events", json=events, params={"delivery": "sync"})
        seen: list[str] = []
        after = None
        for _ in range(10):  # pages of two
            params = {
                "account_id": 5,
                "limit": 2,
                **({"after": after} if after is not None else {}),
            }
            page = await http.ok("GET", "/v1/events", params=params)
            seen += [e["event_id"] for e in page["events"]]
            after = page["next_after"]
            if after is None:
                break
        assert seen == [f"e{i}" for i in range(5)]
        alerts = await http.ok("GET", "/v1/alerts", params={"account_id": 5})
        assert [(a["threshold_code"], a["value_at_cross"]) for a in alerts["alerts"]] == [
            ("every_two", 2),
            ("every_two", 4),
        ]
        first = alerts["alerts"][0]["cursor"]
        later = await http.ok("GET", "/v1/alerts", params={"account_id": 5, "after": first})
        assert [a["value_at_cross"] for a in later["alerts"]] == [4]
        async with AsyncClient([http_node.address]) as client:
            records = await client.list_alerts(5)
            assert [r.cursor for r in records] == [a["cursor"] for a in alerts["alerts"]]


async def test_bad_requests_get_problems_and_the_node_keeps_serving(http_node: NodeProcess) -> None:
    async with Http(http_node.http_url) as http:
        await http.ok("POST", "/v1/metrics", json={"code": "calls", "agg_type": "count"})
        cases = [
            ("POST", "/v1/events", {"body": b"[{"}, 400, "INVALID_REQUEST", "not valid JSON"),
            ("POST", "/v1/events", {"body": b'{"account_id": 1, "metric_code": "calls"}\n{x'},
             400, "INVALID_REQUEST", "line 2"),
            ("POST", "/v1/events", {"json": [{"account_id": 1, "metric": "calls"}]},
             400, "INVALID_REQUEST", "unknown field 'metric'"),
            ("POST", "/v1/events", {"json": [{"account_id": -1, "metric_code": "calls"}]},
             400, "INVALID_REQUEST", "event 0: account_id"),
            ("POST", "/v1/events", {"json": [{"account_id": 1, "metric_code": "calls",
                                              "value": 1.5}]},
             400, "INVALID_REQUEST", "use scale()"),
            ("POST", "/v1/events", {"json": [1, 2]}, 400, "INVALID_REQUEST",
             "event 0: expected a JSON object"),
            ("POST", "/v1/events", {"json": {"account_id": 1}}, 400, "INVALID_REQUEST",
             "event 0: metric code"),
            ("POST", "/v1/events", {"json": [], "params": {"delivery": "later"}},
             400, "INVALID_REQUEST", "delivery"),
            ("POST", "/v1/events", {"body": io.BytesIO(b"[" + b" " * (33 << 20) + b"]")},
             413, "INVALID_REQUEST", ""),
            ("GET", "/v1/usage", {"params": {"metric": "calls"}}, 400, "INVALID_REQUEST",
             "'account_id' is required"),
            ("GET", "/v1/usage", {"params": {"account_id": "x", "metric": "calls"}},
             400, "INVALID_REQUEST", "must be an integer"),
            ("GET", "/v1/usage", {"params": {"account_id": 1, "metric": "calls",
                                             "period": "forever"}},
             400, "INVALID_REQUEST", "period must be one of"),
            ("GET", "/v1/usage", {"params": {"account_id": 1, "metric": "calls",
                                             "filter": "region=eu"}},
             400, "INVALID_REQUEST", "region"),
            ("GET", "/v1/usage", {"params": {"account_id": 1, "metric": "ghost"}},
             404, "UNKNOWN_METRIC", "ghost"),
            ("GET", "/v1/nowhere", {}, 404, "NOT_FOUND", ""),
            ("DELETE", "/v1/usage", {}, 405, "INVALID_REQUEST", ""),
            ("POST", "/v1/metrics", {"json": {"code": "x", "agg_type": "median"}},
             400, "INVALID_REQUEST", "agg_type must be one of"),
        ]  # fmt: skip
        for method, path, kwargs, status, code, words in cases:
            answer = await http.request(method, path, **kwargs)  # type: ignore[arg-type]
            assert (answer.status, answer.problem_code) == (status, code), (path, answer)
            assert words in answer.body["detail"], (path, answer)
            assert answer.body["type"] == f"urn:unimeter:error:{code.lower()}"
        # Bytes that are not HTTP at all: that connection is answered 400 and closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", http_node.http_port)
        writer.write(b"\x00\xffGARBAGE / HTTP/9\r\n" + bytes(range(256)) + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.split(b" ", 2)[1] == b"400", answer[:100]
        writer.close()
        # Nothing of the refused requests was stored; the node still serves.
        stored = await http.ok(
            "POST", "/v1/events", json=[{"account_id": 1, "metric_code": "calls"}]
        )
        assert stored["n_stored"] == 1
        usage = await http.ok("GET", "/v1/usage", params={"account_id": 1, "metric": "calls"})
        assert usage["value"]["count"] == 1
        health = await http.ok("GET", "/health")
        assert health["status"] == "ok"


async def test_metrics_endpoint_counts_ingest_outcomes(http_node: NodeProcess) -> None:
    async with Http(http_node.http_url) as http:
        await http.ok("POST", "/v1/metrics", json={"code": "calls", "agg_type": "count"})
        batch = [{"account_id": a, "metric_code": "calls", "event_id": f"x{a}"} for a in range(4)]
        batch.append({"account_id": 9, "metric_code": "typo"})
        await http.ok("POST", "/v1/events", json=batch)
        await http.ok("POST", "/v1/events", json=batch[:2])  # two duplicates
        async with AsyncClient([http_node.address]) as client:  # and through the binary protocol
            from unimeter import Event

            await client.ingest([Event(account_id=1, metric_code="typo")] * 2)
        text = (await http.get("/metrics")).raw.decode()
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(samples["unimeter_events_ingested_total"]) == 9
    assert float(samples["unimeter_events_stored_total"]) == 4
    assert float(samples["unimeter_events_duplicate_total"]) == 2
    assert (
        float(samples['unimeter_events_rejected_total{metric="typo",reason="unknown_metric"}']) == 3
    )
    assert float(samples['unimeter_requests_total{kind="ingest",protocol="http",status="OK"}']) == 2
    assert (
        float(samples['unimeter_requests_total{kind="ingest",protocol="binary",status="OK"}']) >= 1
    )
    assert (
        float(samples['unimeter_request_duration_seconds_count{kind="ingest",protocol="http"}'])
        == 2
    )
    assert float(samples['unimeter_raft_term{group="0"}']) >= 1
    assert float(samples['unimeter_fsync_duration_seconds_count{group="0"}']) >= 1
    assert 'unimeter_mailbox_depth{partition="0"}' in samples
    assert float(samples['unimeter_recovery_duration_seconds{actor="node"}']) > 0
    assert "event=ingest_rejected metric=typo reason=unknown_metric" in http_node.log()
