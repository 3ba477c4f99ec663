"""The ``unimeter`` command against a real node, run as a separate process like a user runs it.

The import test kills the import part-way (SIGKILL, by PID) and runs it again: the totals are
exactly the file's, whatever the first run had stored.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.nodeproc import NodeProcess
from unimeter import AsyncClient, current_month

CLI_TIMEOUT_S = 60


def cli(node: NodeProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "unimeter.cli", "--node", node.address, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def cli_json(node: NodeProcess, *args: str) -> Any:
    return json.loads(cli(node, "--json", *args).stdout)


def write_events(path: Path, count: int) -> dict[tuple[int, str], int]:
    """An NDJSON file of ``count`` events (a few with their own ids); the expected sums."""
    rng = random.Random(4)
    sums: dict[tuple[int, str], int] = {}
    with path.open("w") as handle:
        for line in range(count):
            event: dict[str, Any] = {
                "account_id": rng.randint(1, 40),
                "metric_code": rng.choice(["calls", "bytes"]),
                "value": rng.randint(1, 1000),
            }
            if line % 10 == 0:
                event["event_id"] = f"own-{line}"
            key = (event["account_id"], event["metric_code"])
            sums[key] = sums.get(key, 0) + event["value"]
            handle.write(json.dumps(event) + "\n")
    return sums


async def totals(node: NodeProcess, keys: list[tuple[int, str]]) -> dict[tuple[int, str], int]:
    async with AsyncClient([node.address]) as client:
        return {
            (account, metric): (await client.query(account, metric, current_month())).value.sum
            for account, metric in keys
        }


async def test_import_interrupted_then_run_again_counts_each_event_once(
    node: NodeProcess, tmp_path: Path
) -> None:
    for code in ("calls", "bytes"):
        cli(node, "metrics", "create", code, "--agg", "sum")
    path = tmp_path / "backlog.ndjson"
    count = 20_000
    expected = write_events(path, count)
    progress = tmp_path / "progress.txt"
    argv = [sys.executable, "-m", "unimeter.cli", "--node", node.address, "import", str(path)]
    with progress.open("w") as err:
        first = subprocess.Popen([*argv, "--batch", "50"], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while "imported" not in progress.read_text():  # a chunk was acknowledged
            assert first.poll() is None, progress.read_text()
            assert time.monotonic() < deadline, "the import never reported progress"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait(timeout=30)
    line = progress.read_text().splitlines()[0]
    assert line.startswith("imported ") and "ev/s" in line and "ETA" in line, line
    before = cli_json(node, "usage", "1", "calls")["value"]["count"]
    stored_before = sum((await totals(node, sorted(expected))).values())
    assert stored_before < sum(expected.values()), "the first run was not interrupted"

    summary = cli_json(node, "import", str(path), "--no-progress")
    assert summary["events"] == count and summary["rejected"] == 0
    assert summary["stored"] + summary["duplicates"] == count
    assert summary["duplicates"] >= before  # what the first run stored came back as duplicates
    assert await totals(node, sorted(expected)) == expected

    again = cli_json(node, "import", str(path), "--no-progress")
    assert (again["stored"], again["duplicates"]) == (0, count)
    assert await totals(node, sorted(expected)) == expected


def test_commands_against_a_node(node: NodeProcess, tmp_path: Path) -> None:
    cli(node, "metrics", "create", "compute", "--agg", "sum", "--dimension",
        "provider=aws,gcp", "--threshold", "big=100+")  # fmt: skip
    listed = cli(node, "metrics", "list").stdout
    assert listed.splitlines()[0].split() == ["CODE", "AGG", "PERIOD", "DIMENSIONS", "THRESHOLDS"]
    assert listed.splitlines()[1].split() == ["compute", "sum", "fixed", "provider:aws|gcp",
                                              "big=100+"]  # fmt: skip
    assert cli_json(node, "metrics", "get", "compute")["thresholds"] == [
        {"code": "big", "value": 100, "recurring": True}
    ]

    csv_file = tmp_path / "events.csv"
    csv_file.write_text(
        "account_id,metric_code,value,provider,event_id\n"
        "7,compute,60,aws,\n"
        "7,compute,70,gcp,x-1\n"
        "8,compute,5,,\n"
    )
    assert cli_json(node, "import", str(csv_file))["stored"] == 3
    assert cli_json(node, "usage", "7", "compute")["value"]["sum"] == 130
    assert cli_json(node, "usage", "7", "compute", "--filter", "provider=aws")["value"]["sum"] == 60
    grouped = cli_json(node, "usage", "7", "compute", "--group-by", "provider")["groups"]
    assert [(g["provider"], g["sum"]) for g in grouped] == [("aws", 60), ("gcp", 70)]
    table = cli(node, "usage", "7", "compute", "--group-by", "provider").stdout.splitlines()
    assert table[1].split()[:3] == ["PROVIDER", "COUNT", "SUM"]
    assert table[2].split()[:3] == ["aws", "1", "60"]

    events = cli_json(node, "events", "list", "7")
    assert [(e["value"], e["properties"]) for e in events] == [
        (60, {"provider": "aws"}), (70, {"provider": "gcp"})
    ]  # fmt: skip
    assert events[1]["event_id"] == "x-1" and events[0]["event_id"].startswith("import-")
    exported = tmp_path / "out.ndjson"
    cli(node, "export", "7", "8", "-o", str(exported))
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [(e["account_id"], e["value"]) for e in lines] == [(7, 60), (7, 70), (8, 5)]
    again = cli_json(node, "import", str(exported))  # an export imports again: all known
    assert (again["stored"], again["duplicates"]) == (0, 3)

    tail = cli(node, "events", "tail", "7", "--count", "2", "--back", "3600").stdout.splitlines()
    assert tail[0].split()[:3] == ["OFFSET", "TIMESTAMP", "METRIC_CODE"] and len(tail) == 3

    status = cli_json(node, "status")
    assert [n["state"] for n in status["nodes"]] == ["up"]
    assert status["nodes"][0]["disk_free"] > 0
    assert len(status["partitions"]) == node.partitions
    assert all(p["leader"] == 1 and p["lag"] == 0 for p in status["partitions"])

    cli(node, "metrics", "delete", "compute")
    gone = cli(node, "usage", "7", "compute", check=False)
    assert gone.returncode == 1 and "unknown metric 'compute'" in gone.stderr


def test_a_bad_file_stops_the_import_before_anything_is_stored(
    node: NodeProcess, tmp_path: Path
) -> None:
    cli(node, "metrics", "create", "calls", "--agg", "count")
    path = tmp_path / "bad.ndjson"
    path.write_text(
        '{"account_id": 1, "metric_code": "calls"}\n{"account_id": -1, "metric_code": "calls"}\n'
    )
    done = cli(node, "import", str(path), check=False)
    assert done.returncode == 1
    assert f"{path}:2: account_id must be in [0, 2**64)" in done.stderr
    assert cli_json(node, "usage", "1", "calls")["value"]["count"] == 0
    usage_error = cli(node, "usage", "1", "calls", "--from", "2025-01-01", check=False)
    assert usage_error.returncode == 1 and "--from and --to go together" in usage_error.stderr
