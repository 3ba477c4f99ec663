"""Safe defaults, against the real ``python -m unimeter.node``: without tokens it serves
loopback only and says so; an exposed address without tokens is refused before anything is
bound (so these tests never listen beyond loopback); bad security files stop the start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nodeproc import NodeProcess, free_port
from tests.support.security import write_tokens


def refused(tmp_path: Path, *args: str) -> str:
    """Run a node that must refuse to start; its exit status is 2 and stderr says why."""
    done = subprocess.run(
        [sys.executable, "-m", "unimeter.node", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert not (tmp_path / "data").exists(), "a refused node must not create its data"
    return done.stderr


def test_without_tokens_the_node_says_it_serves_loopback_only(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data").start()
    try:
        log = node.log()
        assert "event=auth_off" in log and "serving=loopback_only" in log
    finally:
        node.kill()


@pytest.mark.parametrize(
    "listen",
    [["--listen", "0.0.0.0:{port}"], ["--listen", "127.0.0.1:{port}", "--http", "[::]:{port2}"]],
)
def test_an_exposed_address_without_tokens_needs_insecure(
    tmp_path: Path, listen: list[str]
) -> None:
    args = [a.format(port=free_port(), port2=free_port()) for a in listen]
    text = refused(tmp_path, *args)
    assert "without --auth-tokens" in text and "--insecure" in text


def test_a_cluster_with_tokens_needs_the_cluster_secret(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens")
    port, other = free_port(), free_port()
    text = refused(
        tmp_path, "--listen", f"127.0.0.1:{port}", "--node-id", "1",
        "--peers", f"1=127.0.0.1:{port},2=127.0.0.1:{other}", *tokens.args,
    )  # fmt: skip
    assert "needs --cluster-secret-file" in text


@pytest.mark.parametrize(
    ("write", "flag", "message"),
    [
        (lambda p: p.write_text("umt_plain_token admin me\n"), "--auth-tokens", "by its hash"),
        (lambda p: p.write_text("short\n"), "--cluster-secret-file", "at least 16"),
        (lambda p: p.write_text("not a certificate"), "--tls-cert", "cannot load --tls-cert"),
    ],
)
def test_unusable_security_files_stop_the_start(
    tmp_path: Path, write: object, flag: str, message: str
) -> None:
    path = tmp_path / "file"
    write(path)  # type: ignore[operator]
    text = refused(tmp_path, "--listen", f"127.0.0.1:{free_port()}", flag, str(path))
    assert message in text


def test_a_missing_secret_file_stops_the_start(tmp_path: Path) -> None:
    text = refused(
        tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--cluster-secret-file",
        str(tmp_path / "absent"),
    )  # fmt: skip
    assert "cannot read the cluster secret file" in text
