"""The HTTP API of a 3-node cluster: any node answers any request.

Requests for partitions another node leads are forwarded to it; totals read through every node
are the same and exact, and event ids keep events sent through different nodes from counting
twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.http import Http
from tests.support.nodeproc import ClusterProcesses

PARTITIONS = 6
ACCOUNTS = 36


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterProcesses]:
    procs = ClusterProcesses(tmp_path, nodes=3, partitions=PARTITIONS, http=True).start()
    try:
        yield procs
    finally:
        procs.kill_all()


async def leaders_seen_by(http: Http, base: str, timeout_s: float = 30.0) -> dict[int, int]:
    """Partition -> leader node id, once the node at ``base`` knows a leader for every one."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await http.ok("GET", "/v1/cluster", base=base)
        leaders = {p["partition"]: p["leader"] for p in status["partitions"]}
        if None not in leaders.values():
            return leaders
        assert time.monotonic() < deadline, f"no leader for some partition: {leaders}"
        await asyncio.sleep(0.05)


async def test_any_node_answers_and_totals_agree(cluster: ClusterProcesses) -> None:
    urls = {i: n.http_url for i, n in cluster.nodes.items()}
    async with Http(urls[1]) as http:
        leaders = await leaders_seen_by(http, urls[2])
        # Node 2 is asked about every partition: some of them another node leads.
        assert set(leaders.values()) != {2}, f"node 2 leads every partition: {leaders}"
        # Schemas are cluster-wide, whichever node is asked (node 3 forwards to the catalog
        # leader when it is not the leader itself), and events for a metric made a moment ago
        # through another node are stored, not refused as unknown.
        created = await http.post(
            "/v1/metrics", json={"code": "calls", "agg_type": "sum"}, base=urls[3]
        )
        assert created.status == 201, created

        events = [
            {"account_id": a, "metric_code": "calls", "value": a + 1, "event_id": f"a{a}"}
            for a in range(ACCOUNTS)
        ]
        result = await http.ok(
            "POST", "/v1/events", json=events, params={"delivery": "sync"}, base=urls[2]
        )
        assert (result["n_stored"], result["n_rejected"]) == (ACCOUNTS, 0)
        # The same events through the other nodes: recognised by their ids, stored once.
        for node in (1, 3):
            again = await http.ok(
                "POST", "/v1/events", json=events, params={"delivery": "sync"}, base=urls[node]
            )
            assert (again["n_stored"], again["n_duplicates"]) == (0, ACCOUNTS)

        for node, url in urls.items():
            for account in range(ACCOUNTS):
                usage = await http.ok(
                    "GET", "/v1/usage", params={"account_id": account, "metric": "calls"}, base=url
                )
                assert usage["value"]["sum"] == account + 1, (node, account, usage)
                assert usage["value"]["count"] == 1
            page = await http.ok("GET", "/v1/events", params={"account_id": 0}, base=url)
            assert [e["event_id"] for e in page["events"]] == ["a0"]
            listed = await http.ok("GET", "/v1/metrics", base=url)
            assert [m["code"] for m in listed["metrics"]] == ["calls"]

        # A metric made through one node is readable through another at once (that node's
        # catalog replica may not have it yet: the catalog leader is asked).
        for maker, reader in ((1, 3), (3, 2), (2, 1)):
            code = f"fresh_{maker}"
            await http.ok("POST", "/v1/metrics", json={"code": code, "agg_type": "count"},
                          base=urls[maker])  # fmt: skip
            usage = await http.ok(
                "GET", "/v1/usage", params={"account_id": 5, "metric": code}, base=urls[reader]
            )
            assert usage["value"]["count"] == 0
