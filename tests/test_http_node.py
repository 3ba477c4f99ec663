"""The HTTP API as part of the node: where it listens, its OpenAPI document, JSON logs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from openapi_spec_validator import validate

from tests.support.nodeproc import NodeProcess, free_port, port_is_free
from unimeter.node import Node, NodeConfig
from unimeter.server.http import HttpServer


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ports_with_http_default() -> int:
    """A free port whose HTTP default (port + 79) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 79 < 65536 and port_is_free(port + 79):
            return port
    raise AssertionError("no free pair of ports")


async def test_openapi_document_validates_and_covers_every_route(http_node: NodeProcess) -> None:
    status, body = fetch(http_node.http_url + "/v1/openapi.json")
    assert status == 200
    document = json.loads(body)
    validate(document)  # raises on any violation of the OpenAPI 3.1 specification
    described = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    app = HttpServer(Node(NodeConfig(data_dir=str(http_node.data_dir)))).app()
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert described == served


def test_http_listens_beside_the_binary_port_by_default(tmp_path: Path) -> None:
    port = ports_with_http_default()
    node = NodeProcess(tmp_path / "data", port=port, default_http=True).start()
    try:
        status, body = fetch(f"http://127.0.0.1:{port + 79}/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        node.kill()
    off = NodeProcess(tmp_path / "off", port=port, extra_args=("--http", "off")).start()
    try:
        assert port_is_free(port + 79)
        assert "http=off" in off.log()
    finally:
        off.kill()


def test_json_logs(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", http=True, extra_args=("--log-format", "json")).start()
    try:
        status, _ = fetch(node.http_url + "/health")
        assert status == 200
        assert node.terminate() == 0
    finally:
        node.kill()
    text = node.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    serving = [e for e in lines if e.get("event") == "serving"]
    assert serving and serving[0]["level"] == "info" and serving[0]["logger"] == "unimeter.node"
    assert serving[0]["listen"] == node.address
    assert any(e.get("event") == "stopped" for e in lines)
