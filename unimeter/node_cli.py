"""The command line of ``python -m unimeter.node``: flags, logging, the event loop, exit codes.

Every flag has a ``UNIMETER_*`` environment twin (``--data-dir`` -> ``UNIMETER_DATA_DIR``).
Exit status: 0 after SIGTERM/SIGINT (drained, synced, snapshotted); 2 when the node refuses to
start (a taken port, a corrupt log, a snapshot of another version); 70 after a crash and 74
after a failed storage write (``unimeter/supervisor.py``: a supervisor should restart it).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

from unimeter import limits
from unimeter.node import (
    ListenError,
    Node,
    NodeConfig,
    parse_peers,
    split_address,
)
from unimeter.node import (
    __doc__ as NODE_DOC,
)
from unimeter.security.cluster_secret import SecretFileError
from unimeter.security.tls import TlsConfigError
from unimeter.security.tokens import TokenFileError
from unimeter.server.logs import configure_logging
from unimeter.state.snapshot import SnapshotFormatError
from unimeter.storage.walformat import CorruptLogError
from unimeter.supervisor import Supervisor
from unimeter.webhooks.signing import WebhookSecretError

log = logging.getLogger("unimeter.node")


def _env(name: str, default: str) -> str:
    return os.environ.get("UNIMETER_" + name.upper().replace("-", "_"), default)


def parse_args(argv: Sequence[str] | None = None) -> NodeConfig:
    d = NodeConfig()
    p = argparse.ArgumentParser(
        prog="python -m unimeter.node",
        description=NODE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--node-id", type=int, default=int(_env("node-id", str(d.node_id))))
    p.add_argument("--listen", default=_env("listen", d.listen), help="HOST:PORT")
    p.add_argument(
        "--advertise",
        default=_env("advertise", "") or None,
        help="HOST:PORT clients should dial (default: --listen)",
    )
    p.add_argument("--peers", default=_env("peers", d.peers), help="ID=HOST:PORT,...")
    p.add_argument("--data-dir", default=_env("data-dir", d.data_dir))
    p.add_argument(
        "--partitions",
        type=int,
        default=int(_env("partitions", str(d.partitions))),
        help="fixed when the data directory is created",
    )
    p.add_argument(
        "--replication-factor",
        type=int,
        default=int(_env("replication-factor", str(d.replication_factor))),
    )
    p.add_argument(
        "--disk-reserve-bytes",
        type=int,
        default=int(_env("disk-reserve-bytes", str(d.disk_reserve_bytes))),
    )
    p.add_argument(
        "--retention-days", type=int, default=int(_env("retention-days", str(d.retention_days)))
    )
    p.add_argument(
        "--http",
        default=_env("http", "") or None,
        metavar="HOST:PORT|off",
        help="the HTTP/JSON API, /health and /metrics (default: the --listen host, its port "
        f"+ {limits.http_port_offset}: 7080 for 7001)",
    )
    p.add_argument(
        "--election-timeout-ms",
        type=int,
        default=int(_env("election-timeout-ms", str(d.election_timeout_ms))),
        help="Raft election timeout; leaders send heartbeats ten times as often",
    )
    p.add_argument(
        "--snapshot-entries",
        type=int,
        default=int(_env("snapshot-entries", str(d.snapshot_entries))),
        help="snapshot a partition after this many log entries (0: only at shutdown)",
    )
    p.add_argument(
        "--snapshot-bytes",
        type=int,
        default=int(_env("snapshot-bytes", str(d.snapshot_bytes))),
        help="... or after this many log bytes (0: no byte trigger)",
    )
    p.add_argument(
        "--wal-segment-bytes",
        type=int,
        default=int(_env("wal-segment-bytes", str(d.wal_segment_bytes))),
        help="WAL segment size; compaction deletes whole segments",
    )
    p.add_argument(
        "--trace",
        default=_env("trace", "") or None,
        metavar="FILE",
        help="record every message delivered to every core (python -m unimeter.trace replay)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=int(_env("max-connections", str(d.max_connections))),
        help="client connections served at once; more are refused with UNAVAILABLE",
    )
    sec = p.add_argument_group("security (docs/security.md)")
    sec.add_argument(
        "--auth-tokens",
        default=_env("auth-tokens", "") or None,
        metavar="FILE",
        help="API tokens, one 'sha256:<hex> ROLE NAME' line each (`unimeter token new`); "
        "every request then needs one. Read again on SIGHUP",
    )
    sec.add_argument(
        "--cluster-secret-file",
        default=_env("cluster-secret-file", "") or None,
        metavar="FILE",
        help="a secret (at least 16 bytes) every node of the cluster holds; peers prove it "
        "before any Raft message is accepted",
    )
    sec.add_argument(
        "--tls-cert",
        default=_env("tls-cert", "") or None,
        metavar="PEM",
        help="serve TLS on the binary and HTTP ports and dial peers with TLS",
    )
    sec.add_argument(
        "--tls-key", default=_env("tls-key", "") or None, metavar="PEM",
        help="the key of --tls-cert (default: in the --tls-cert file)",
    )  # fmt: skip
    sec.add_argument(
        "--tls-ca",
        default=_env("tls-ca", "") or None,
        metavar="PEM",
        help="CA certificates that verify peers' certificates (default: the system's)",
    )
    sec.add_argument(
        "--webhook-secret-file",
        default=_env("webhook-secret-file", "") or None,
        metavar="FILE",
        help="signs alert webhooks (X-Unimeter-Signature: HMAC-SHA256 of the body)",
    )
    sec.add_argument(
        "--insecure",
        action="store_true",
        default=_env("insecure", "") not in ("", "0", "false"),
        help="listen on a non-loopback address without --auth-tokens (anyone who reaches "
        "the port may read and change everything), or run a networked cluster without "
        "--cluster-secret-file",
    )
    p.add_argument(
        "--log-level",
        default=_env("log-level", d.log_level),
        choices=["debug", "info", "warning", "error"],
    )
    p.add_argument(
        "--log-format",
        default=_env("log-format", d.log_format),
        choices=["text", "json"],
        help="text: key=value lines; json: one JSON object per line",
    )
    a = p.parse_args(argv)
    if not 1 <= a.partitions <= limits.partitions_max:
        p.error(f"--partitions must be 1-{limits.partitions_max}")
    if a.snapshot_entries < 0 or a.snapshot_bytes < 0:
        p.error("--snapshot-entries and --snapshot-bytes must be >= 0")
    if a.max_connections < 1:
        p.error("--max-connections must be >= 1")
    if a.wal_segment_bytes < limits.wal_segment_bytes_min:
        p.error(f"--wal-segment-bytes must be >= {limits.wal_segment_bytes_min}")
    try:
        split_address(a.listen)
        if a.http and a.http != "off":
            split_address(a.http)
        parse_peers(a.peers)
    except ValueError as exc:
        p.error(str(exc))
    return NodeConfig(
        node_id=a.node_id,
        listen=a.listen,
        advertise=a.advertise,
        peers=a.peers,
        data_dir=a.data_dir,
        partitions=a.partitions,
        replication_factor=a.replication_factor,
        disk_reserve_bytes=a.disk_reserve_bytes,
        retention_days=a.retention_days,
        log_level=a.log_level,
        log_format=a.log_format,
        http=a.http,
        election_timeout_ms=a.election_timeout_ms,
        snapshot_entries=a.snapshot_entries,
        snapshot_bytes=a.snapshot_bytes,
        wal_segment_bytes=a.wal_segment_bytes,
        trace=a.trace,
        max_connections=a.max_connections,
        auth_tokens=a.auth_tokens,
        cluster_secret_file=a.cluster_secret_file,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        tls_ca=a.tls_ca,
        webhook_secret_file=a.webhook_secret_file,
        insecure=a.insecure,
    )


def tune_gc(*, recovered: bool) -> None:
    """Keep the cycle collector off the hot path.

    The applied state is millions of small containers that never form cycles (reference
    counting frees them); with the default thresholds the collector walks them again and again
    (about a tenth of ingest time in a profile, more than half of a log replay's, and full
    collections stall the loop for as long as the heap is large). A larger first threshold,
    set before recovery replays the log, makes collections rare; freezing what recovery loaded
    (``recovered=True``) moves it out of the collector's sight for good.
    """
    gc.set_threshold(100_000, 20, 20)
    if recovered:
        gc.freeze()


# glibc's mallopt parameter and the size from which an allocation gets pages of its own.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def tune_malloc() -> bool:
    """Give every large buffer (numpy columns, index arrays, log records) pages of its own.

    glibc starts by mapping allocations of 128 KiB and more separately, but raises that limit
    to the size of each such block freed (up to 32 MiB), so once the state has grown one
    column by copying, every later column, index and chunk comes from the shared heap: a
    column's unused capacity is touched when its memory is recycled, and what is freed stays
    resident behind live blocks (the node held ~60 B per cell more than its arrays). A fixed
    threshold keeps large buffers mapped: untouched capacity costs no memory and a freed
    buffer goes back to the system at once. The price is a page fault per fresh page where a
    recycled block was warm: about a tenth more CPU while cells are made, more in a log
    replay (measured +10-25% replay CPU). False where the C library has no ``mallopt``.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


async def serve(config: NodeConfig) -> None:
    tune_gc(recovered=False)
    tune_malloc()
    supervisor = Supervisor()
    loop = asyncio.get_running_loop()
    supervisor.install(loop)
    node = Node(config, supervisor)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, node.reload_tokens)  # new tokens, no restart
    await node.start()
    tune_gc(recovered=True)
    await stop.wait()
    log.info("event=stopping")
    await node.stop()


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    configure_logging(config.log_level, config.log_format, sys.stderr)
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
            asyncio.run(serve(config))
        else:
            uvloop.run(serve(config))
    except ListenError as exc:
        log.critical("event=listen_failed reason=%r action=exiting", str(exc))
        print(f"unimeter.node: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except (TokenFileError, SecretFileError, TlsConfigError, WebhookSecretError) as exc:
        log.critical("event=security_config_failed reason=%r action=exiting", str(exc))
        print(f"unimeter.node: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except CorruptLogError as exc:
        # Nothing was modified; docs/operations.md says what to do.
        log.critical(
            "event=corrupt_log file=%s offset=%d reason=%r action=refusing_to_start",
            exc.path, exc.offset, exc.reason,
        )  # fmt: skip
        raise SystemExit(2) from None
    except SnapshotFormatError as exc:
        # Written by another version of unimeter; nothing was modified.
        log.critical(
            "event=unreadable_snapshot file=%s version=%s reason=%r action=refusing_to_start",
            exc.path, exc.version, str(exc),
        )  # fmt: skip
        raise SystemExit(2) from None
