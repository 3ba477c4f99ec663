"""TLS with real certificates (a throwaway CA from ``trustme``): the binary port, the HTTP
port and the CLI, a client that does not trust the node, and a plain-TCP client refused."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.support.http import Http, sse_events
from tests.support.nodeproc import NodeProcess
from tests.support.security import Certs, Tokens, make_certs, write_tokens
from unimeter import AsyncClient, current_month
from unimeter.errors import AuthError, UnavailableError
from unimeter.model import AggType, AlertThreshold, DeliveryMode, Event, MetricSchema


@pytest.fixture(scope="module")
def tls_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NodeProcess, Certs, Tokens]]:
    root = tmp_path_factory.mktemp("tls")
    certs = make_certs(root / "certs")
    tokens = write_tokens(root / "tokens")
    node = NodeProcess(root / "data", http=True, extra_args=(*certs.node_args, *tokens.args))
    node.start()
    try:
        yield node, certs, tokens
    finally:
        node.kill()


async def test_the_client_over_tls(tls_node: tuple[NodeProcess, Certs, Tokens]) -> None:
    node, certs, tokens = tls_node
    async with AsyncClient(
        [node.address], token=tokens.by_role["admin"], tls=certs.client_context()
    ) as client:
        await client.metrics.create(MetricSchema(code="tls_calls", agg_type=AggType.SUM))
        events = [Event(account_id=a, metric_code="tls_calls", value=a) for a in range(1, 50)]
        result = await client.ingest(events, delivery=DeliveryMode.SYNC)
        assert result.n_stored == 49
        assert (await client.query(7, "tls_calls", current_month())).value.sum == 7
    assert "tls=on" in node.log()


async def test_a_client_that_does_not_trust_the_node_is_refused(
    tls_node: tuple[NodeProcess, Certs, Tokens],
) -> None:
    node, _, tokens = tls_node
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)  # trusts another CA only
    client = AsyncClient([node.address], token=tokens.by_role["read"], tls=stranger)
    with pytest.raises(AuthError, match="does not verify"):
        async with client:
            await client.metrics.list()
    # The system's CAs do not know the test CA either (tls=True).
    with pytest.raises(AuthError, match="does not verify"):
        async with AsyncClient([node.address], token=tokens.by_role["read"], tls=True) as c:
            await c.metrics.list()


async def test_plain_tcp_gets_nothing(tls_node: tuple[NodeProcess, Certs, Tokens]) -> None:
    node, _, tokens = tls_node
    client = AsyncClient([node.address], token=tokens.by_role["read"], request_timeout=3)
    with pytest.raises(UnavailableError, match="if the node serves TLS, connect with tls="):
        async with client:
            await client.metrics.list()


async def test_http_over_tls(tls_node: tuple[NodeProcess, Certs, Tokens]) -> None:
    node, certs, tokens = tls_node
    url = node.http_url.replace("http://", "https://")
    headers = {"Authorization": f"Bearer {tokens.by_role['read']}"}
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # A usage read (the fast lane's), then a request it hands to aiohttp, on one connection.
        async with session.get(url + "/v1/usage?account_id=1&metric=nope", headers=headers,
                               ssl=certs.client_context()) as response:  # fmt: skip
            assert response.status == 404
            assert (await response.json())["code"] == "UNKNOWN_METRIC"
        async with session.get(url + "/v1/metrics", headers=headers,
                               ssl=certs.client_context()) as response:  # fmt: skip
            assert response.status == 200
            assert "metrics" in await response.json()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(url + "/health", ssl=ssl.create_default_context()):
                pass
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to a TLS port
            async with session.get(node.http_url + "/health"):
                pass


def test_the_cli_over_tls(tls_node: tuple[NodeProcess, Certs, Tokens]) -> None:
    node, certs, tokens = tls_node
    env = {**os.environ, "UNIMETER_TOKEN": tokens.by_role["read"]}
    base = [sys.executable, "-m", "unimeter.cli", "--node", node.address, "--json"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=60, env=env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    done = run("--tls-ca", str(certs.ca_path), "metrics", "list")
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)
    status = run("--tls-ca", str(certs.ca_path), "status")
    assert status.returncode == 0 and '"state": "up"' in status.stdout, status.stderr
    untrusted = run("--tls", "metrics", "list")  # the system's CAs: the test CA is unknown
    assert untrusted.returncode == 1 and "does not verify" in untrusted.stderr
    missing = run("--tls-ca", str(Path(certs.ca_path).with_name("absent.pem")), "metrics", "list")
    assert missing.returncode == 1 and "cannot load the CA file" in missing.stderr


async def test_a_tls_node_without_tls_ca_streams_alerts_over_http(tmp_path: Path) -> None:
    """The HTTP alert stream dials the node itself: its own certificate is enough."""
    certs = make_certs(tmp_path / "certs")
    node = NodeProcess(
        tmp_path / "data", http=True,
        extra_args=("--tls-cert", str(certs.cert_path), "--tls-key", str(certs.key_path)),
    ).start()  # fmt: skip
    try:
        async with AsyncClient([node.address], tls=certs.client_context()) as client:
            await client.metrics.create(
                MetricSchema(code="c", agg_type=AggType.SUM, thresholds=(AlertThreshold("t", 1),))
            )
            await client.ingest([Event(account_id=3, metric_code="c", value=2)],
                                delivery=DeliveryMode.SYNC)  # fmt: skip
        url = node.http_url.replace("http://", "https://")
        stream = url + "/v1/alerts/stream?account_id=3"
        async with (
            Http(url, tls=certs.client_context()) as http,
            http.session.get(stream) as response,
        ):
            assert response.status == 200
            async for _, event, data in sse_events(response, 1, timeout_s=20):
                assert event == "alert" and data["threshold_code"] == "t"
    finally:
        node.kill()
