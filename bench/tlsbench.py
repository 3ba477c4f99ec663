"""What security costs (section ``tls``): ingest and query through the ``AsyncClient`` against
three fresh nodes in the same run, one after the other, each in the same shape:

- ``plain``: no tokens, no TLS (the loopback default);
- ``token``: ``--auth-tokens`` (the token is checked once per connection, in HELLO, and each
  request's kind against the role: a set lookup);
- ``tls``: ``--auth-tokens`` and ``--tls-cert``/``--tls-key``, the client dialling with
  ``tls=`` (an ``ssl.SSLContext`` trusting a throwaway CA made by ``trustme``).

On each: ``client.ingest_columns`` of the plain workload (50,000 events a call, 2 calls in
flight) for ``client_duration_s`` in all, then sequential ``client.query`` round trips
(``client_query_samples`` after 100 warm-up calls), both cut in rounds that visit the three
nodes in turn. Ingest is reported as wall-clock throughput (the median of the rounds) and as CPU
time per event of the node and of the client (from ``/proc``, summed over the rounds: what TLS
costs, and far less moved by other programs sharing the machine than the wall clock). The
``token`` and ``tls`` rows name the ``plain`` row as their baseline, so the tables show the
ratio.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import ssl
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from bench import clientbench, procs, settings, workload
from bench.report import Figure, Results
from bench.settings import Settings
from bench.stats import summary
from unimeter import AsyncClient, current_month
from unimeter.security.roles import Role
from unimeter.security.tokens import entry_for, new_token

MODES = ("plain", "token", "tls")
CALLS_IN_FLIGHT = 2
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
EVENTS_PER_CALL = 50_000


def _credentials(directory: Path) -> dict[str, Any]:
    """A token file with one admin token, and a CA with a certificate for 127.0.0.1."""
    import trustme  # a test dependency (pyproject's ``test`` extra); only this section needs it

    directory.mkdir(parents=True, exist_ok=True)
    token = new_token()
    tokens = directory / "tokens"
    tokens.write_text(entry_for(token, Role.ADMIN, "bench").line() + "\n")
    ca = trustme.CA()
    leaf = ca.issue_cert(procs.HOST)
    cert, key, ca_pem = directory / "node.pem", directory / "node.key", directory / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    return {"token": token, "tokens": str(tokens), "cert": str(cert), "key": str(key),
            "ca": str(ca_pem)}  # fmt: skip


def _node_args(mode: str, creds: dict[str, Any]) -> tuple[str, ...]:
    if mode == "plain":
        return ()
    args: tuple[str, ...] = ("--auth-tokens", creds["tokens"])
    if mode == "tls":
        args += ("--tls-cert", creds["cert"], "--tls-key", creds["key"])
    return args


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


async def _ingest_slice(
    client: AsyncClient, calls: list[Any], duration_s: float, node_pid: int
) -> tuple[float, int, float, float]:
    """(Events per second of wall time, events, client CPU s, node CPU s) over one slice."""
    events = 0
    cpu0, node0 = time.process_time(), _cpu_s(node_pid)
    t0 = time.perf_counter()
    deadline = t0 + duration_s

    async def worker(k: int) -> None:
        nonlocal events
        i = k
        while time.perf_counter() < deadline:
            result = await client.ingest_columns(**calls[i % len(calls)])
            events += result.n_stored + result.n_duplicates + result.n_rejected
            i += CALLS_IN_FLIGHT

    await asyncio.gather(*(worker(k) for k in range(CALLS_IN_FLIGHT)))
    wall = time.perf_counter() - t0
    return events / wall, events, time.process_time() - cpu0, _cpu_s(node_pid) - node0


async def _query_slice(
    client: AsyncClient, rng: np.random.Generator, count: int, took: list[float]
) -> None:
    period = current_month()
    for i in range(count):
        account = int(rng.integers(1, settings.ACCOUNTS + 1))
        code = settings.METRIC_CODES[i % len(settings.METRIC_CODES)]
        started = time.perf_counter()
        await client.query(account, code, period)
        took.append((time.perf_counter() - started) * 1e6)


async def _measure(
    addresses: dict[str, str],
    pids: dict[str, int],
    creds: dict[str, Any],
    rounds: int,
    slice_s: float,
    samples: int,
) -> dict[str, Any]:
    """Every mode in turn, ``rounds`` times, each round starting with the next mode: a slow
    moment of the machine (other programs share it), or the nodes' background work after the
    ingest slices, then costs every mode alike instead of whichever ran during it."""
    rng = np.random.default_rng(5)
    calls = [clientbench.plain_columns(rng, EVENTS_PER_CALL) for _ in range(2)]
    gc.collect()
    gc.freeze()
    clients: dict[str, AsyncClient] = {}
    for mode in MODES:
        tls = ssl.create_default_context(cafile=creds["ca"]) if mode == "tls" else None
        token = None if mode == "plain" else creds["token"]
        client = AsyncClient([addresses[mode]], token=token, tls=tls, request_timeout=60)
        await client.connect()
        clients[mode] = client
        for schema in workload.metric_schemas(with_region=False, workload=workload.PLAIN):
            await client.metrics.create(schema)
        await client.ingest_columns(**calls[0])  # connections and map warm before the clock
        await _query_slice(client, rng, 100, [])
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [0, 0.0, 0.0] for mode in MODES}  # events, client, node
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for r in range(rounds):
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]  # no mode always first
            for mode in order:
                rate, events, client_s, node_s = await _ingest_slice(
                    clients[mode], calls, slice_s, pids[mode]
                )
                rates[mode].append(rate)
                cpu[mode][0] += events
                cpu[mode][1] += client_s
                cpu[mode][2] += node_s
            for mode in order:
                await _query_slice(clients[mode], rng, samples // rounds, latencies[mode])
    finally:
        for client in clients.values():
            await client.close()
    gc.unfreeze()
    return {
        mode: {
            "ingest_rates": rates[mode],
            "ingest_median": float(np.median(rates[mode])),
            "client_cpu_us_per_event": cpu[mode][1] / max(1, cpu[mode][0]) * 1e6,
            "node_cpu_us_per_event": cpu[mode][2] / max(1, cpu[mode][0]) * 1e6,
            "query": summary(latencies[mode]),
        }
        for mode in MODES
    }


def measure_in_process(
    addresses: dict[str, str],
    pids: dict[str, int],
    creds: dict[str, Any],
    rounds: int,
    slice_s: float,
    samples: int,
) -> dict[str, Any]:
    return uvloop.run(_measure(addresses, pids, creds, rounds, slice_s, samples))


def tls(res: Results, work: Path, s: Settings) -> None:
    creds = _credentials(work / "tls-credentials")
    rounds = 3 if s.name == "quick" else 6
    children: dict[str, procs.Child] = {}
    try:
        for mode in MODES:
            data_dir = work / f"tls-{mode}"
            shutil.rmtree(data_dir, ignore_errors=True)
            child = procs.node(
                data_dir, partitions=settings.PARTITIONS, extra=_node_args(mode, creds)
            )
            child.start()
            children[mode] = child
        runs = procs.call_in_process(
            measure_in_process, {m: c.address for m, c in children.items()},
            {m: c.pid for m, c in children.items()}, creds, rounds,
            s.client_duration_s / rounds, s.client_query_samples,
            timeout_s=3 * s.client_duration_s + 300,
        )  # fmt: skip
    finally:
        for mode, child in children.items():
            child.kill()
            shutil.rmtree(work / f"tls-{mode}", ignore_errors=True)
    res.detail("tls", runs)
    for mode in MODES:
        rates = runs[mode]["ingest_rates"]
        res.add(
            Figure(
                key=f"tls.{mode}.ingest",
                label=f"ingest_columns, 50,000 plain events, {mode}",
                value=runs[mode]["ingest_median"],
                unit="ev/s",
                baseline_key=None if mode == "plain" else "tls.plain.ingest",
                note=f"median of {len(rates)} slices: " + ", ".join(f"{r:,.0f}" for r in rates),
            )
        )
    for mode in MODES:
        for side in ("node", "client"):
            res.add(
                Figure(
                    key=f"tls.{mode}.ingest.{side}_cpu",
                    label=f"ingest_columns, {mode}: {side} CPU per event",
                    value=runs[mode][f"{side}_cpu_us_per_event"],
                    unit="us",
                    lower_is_better=True,
                    baseline_key=None if mode == "plain" else f"tls.plain.ingest.{side}_cpu",
                )
            )
    for mode in MODES:
        lat = runs[mode]["query"]
        for p in ("p50", "p99"):
            res.add(
                Figure(
                    key=f"tls.{mode}.query.{p}",
                    label=f"AsyncClient.query round trip, {mode}, {p}",
                    value=lat[p],
                    unit="us",
                    lower_is_better=True,
                    baseline_key=None if mode == "plain" else f"tls.plain.query.{p}",
                )
            )
