"""The cluster secret between real node processes: a cluster with TLS, tokens and a secret
replicates, fails over and forwards HTTP requests; a node with the wrong secret is refused both
ways and logged, and gets no Raft message; a process that claims to be a node without proving
the secret is refused before any Raft message is accepted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support.http import Http
from tests.support.nodeproc import ClusterProcesses
from tests.support.security import make_certs, write_secret, write_tokens
from unimeter import AsyncClient, current_month
from unimeter.client.connection import Connection
from unimeter.errors import AuthError
from unimeter.model import AggType, DeliveryMode, Event, MetricSchema
from unimeter.peer import peer_frame
from unimeter.wire import messages as m
from unimeter.wire.codec import ClientCodec

ACCOUNTS = 30


def events(batch: int) -> list[Event]:
    return [
        Event(account_id=a, metric_code="calls", value=1, event_id=f"b{batch}-{a}")
        for a in range(ACCOUNTS)
    ]


async def leaders(client: AsyncClient, timeout_s: float = 20.0) -> dict[int, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await client.cluster_status()
        found = {p.partition: p.leader for p in status.partitions}
        if all(leader > 0 for leader in found.values()):
            return found
        assert time.monotonic() < deadline, f"no leader for some partitions: {found}"
        await asyncio.sleep(0.1)


async def test_a_cluster_with_tls_tokens_and_a_secret(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    tokens = write_tokens(tmp_path / "tokens")
    secret = write_secret(tmp_path / "secret")
    cluster = ClusterProcesses(
        tmp_path,
        partitions=3,
        http=True,
        extra_args=(*certs.node_args, *tokens.args, "--cluster-secret-file", str(secret)),
    ).start()
    try:
        async with AsyncClient(
            cluster.seeds, token=tokens.by_role["admin"], tls=certs.client_context(),
            request_timeout=30,
        ) as client:  # fmt: skip
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            await leaders(client)
            for batch in range(3):
                result = await client.ingest(events(batch), delivery=DeliveryMode.SYNC)
                assert result.n_stored == ACCOUNTS
            # Fail over: stop the leader of partition 0; the others elect a new one over
            # their authenticated TLS links and the data is all there.
            victim = (await leaders(client))[0]
            cluster.nodes[victim].kill()
            result = await client.ingest(events(3), delivery=DeliveryMode.SYNC)
            assert result.n_stored == ACCOUNTS
            period = current_month()
            assert [(await client.query(a, "calls", period)).value.sum for a in range(5)] == [4] * 5
            # HTTP on a surviving node forwards to leaders elsewhere as a member, with TLS.
            survivor = next(n for i, n in cluster.nodes.items() if i != victim)
            url = survivor.http_url.replace("http://", "https://")
            async with Http(url, tls=certs.client_context()) as http:
                headers = {"Authorization": f"Bearer {tokens.by_role['read']}"}
                for account in range(ACCOUNTS):
                    answer = await http.get(
                        f"/v1/usage?account_id={account}&metric_code=calls", headers=headers
                    )
                    assert answer.status == 200 and answer.body["value"]["sum"] == 4, answer
        for node_id, node in cluster.nodes.items():
            log = node.log()
            assert "event=peer_refused" not in log and "reason=bad_proof" not in log, node_id
            assert "event=member_authenticated" in log
    finally:
        cluster.kill_all()


def _log_has(cluster: ClusterProcesses, node_id: int, text: str) -> bool:
    return text in cluster.nodes[node_id].log()


async def test_a_node_with_the_wrong_secret_is_refused_and_logged(tmp_path: Path) -> None:
    good = write_secret(tmp_path / "good")
    wrong = write_secret(tmp_path / "wrong")
    cluster = ClusterProcesses(
        tmp_path,
        partitions=3,
        node_args={
            1: ("--cluster-secret-file", str(good)),
            2: ("--cluster-secret-file", str(good)),
            3: ("--cluster-secret-file", str(wrong)),
        },
    ).start()
    try:
        # The two nodes that share the secret are a majority: the cluster serves.
        async with AsyncClient(cluster.seeds[:2], request_timeout=30) as client:
            await client.metrics.create(MetricSchema(code="calls", agg_type=AggType.SUM))
            found = await leaders(client)
            assert set(found.values()) <= {1, 2}
            result = await client.ingest(events(0), delivery=DeliveryMode.SYNC)
            assert result.n_stored == ACCOUNTS
        deadline = time.monotonic() + 20
        while not (
            _log_has(cluster, 1, "event=peer_refused peer=3")
            and _log_has(cluster, 1, "reason=unanswered_challenge")
            and _log_has(cluster, 3, "event=peer_refused peer=1")
            and _log_has(cluster, 3, "node 1 holds a different cluster secret")
        ):
            assert time.monotonic() < deadline, cluster.nodes[3].log()
            await asyncio.sleep(0.1)
        # Node 3 got no Raft message: nothing committed, not even the catalog.
        own = await _own_status(cluster.nodes[3].address)
        assert own.catalog_version == 0, "node 3 must not have received the catalog"
        assert all(p.commit_index == 0 and p.leader != 3 for p in own.partitions)
    finally:
        cluster.kill_all()


async def _own_status(address: str) -> m.ClusterStatusReply:
    connection = Connection(address)
    deadline = asyncio.get_running_loop().time() + 10
    try:
        await connection.open(m.Hello(version=m.PROTOCOL_VERSION, client_name="t"), deadline)
        reply = await connection.request(m.ClusterStatus(), deadline)
        assert isinstance(reply, m.ClusterStatusReply)
        return reply
    finally:
        await connection.close()


async def test_claiming_to_be_a_node_without_the_secret_gets_no_raft_in(tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "secret")
    cluster = ClusterProcesses(
        tmp_path, nodes=2, partitions=2, replication_factor=2,
        extra_args=("--cluster-secret-file", str(secret)),
    ).start()  # fmt: skip
    try:
        target = cluster.nodes[1]
        # The client-side check of a HELLO naming a node: refused with AUTH.
        impostor = Connection(target.address)
        hello = m.Hello(version=m.PROTOCOL_VERSION, client_name="node-2", peer_node_id=2)
        try:
            deadline = asyncio.get_running_loop().time() + 10
            try:
                await impostor.open(hello, deadline)
                raise AssertionError("a HELLO as node 2 without the secret was accepted")
            except AuthError as exc:
                assert "prove the cluster secret" in exc.message
        finally:
            await impostor.close()
        # Raft messages sent anyway, before or after that refused HELLO: the connection
        # is closed and the refusal counted, nothing delivered.
        host, port = target.address.split(":")
        for greet_first in (False, True):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                if greet_first:
                    writer.write(ClientCodec().encode_request(1, hello))
                writer.write(peer_frame([b"\x80"]))
                await writer.drain()
                data = b""
                while chunk := await asyncio.wait_for(reader.read(65536), 10):
                    data += chunk
                assert greet_first == (b"cluster secret" in data)  # the AUTH reply, then EOF
            finally:
                writer.close()
                await writer.wait_closed()
        assert "reason=not_a_member" in target.log()
        assert "reason=missing_proof" in target.log()
    finally:
        cluster.kill_all()
