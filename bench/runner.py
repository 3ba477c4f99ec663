"""``python -m bench [--quick]``: run every section, print the table, write the JSON file.

Sections run in order, limits first (every later figure is a ratio to one of them). A section
that fails is recorded with its error and the run goes on; the exit status is 1 if any failed
(CI does not gate on speed, only on the suite working). Whatever happens, every child process
still running is stopped by its PID and the work directory is removed (unless --keep-work).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    callcount,
    clientbench,
    cluster,
    failover,
    httpbench,
    inprocess,
    limits,
    procs,
    profiling,
    rangeread,
    recovery,
    scenarios,
    tlsbench,
)
from bench.report import Results, machine_info
from bench.settings import FULL, QUICK, Settings

RESULTS_DIR = procs.REPO_ROOT / "bench" / "results"
FOREIGN_CPU_WARN = 0.1  # cores used by other programs during a section

Section = Callable[[Results, Path, Settings, argparse.Namespace], None]

SECTIONS: dict[str, Section] = {
    "fsync": lambda r, w, s, a: limits.fsync(r, w, s),
    "loopback": lambda r, w, s, a: limits.loopback(r, w, s),
    "codec": lambda r, w, s, a: limits.codec(r, s),
    "raw": lambda r, w, s, a: limits.raw_server(r, w, s),
    "floor": lambda r, w, s, a: limits.derived(r),
    "ingest": lambda r, w, s, a: scenarios.ingest(r, w, s),
    "latency": lambda r, w, s, a: scenarios.sync_latency(r, w, s),
    "cluster": lambda r, w, s, a: cluster.cluster(r, w, s),
    "failover": lambda r, w, s, a: failover.failover(r, w, s, kills=3 if s is QUICK else 10),
    "scaling": lambda r, w, s, a: scenarios.scaling(r, w, s),
    "queries": lambda r, w, s, a: scenarios.queries(r, w, s),
    "server-queries": lambda r, w, s, a: inprocess.server_query_figures(r, s),
    "range-reads": lambda r, w, s, a: rangeread.range_read_figures(r, s),
    "calls": lambda r, w, s, a: callcount.call_figures(r, w, s),
    "apply": lambda r, w, s, a: inprocess.apply_figures(r, s),
    "client": lambda r, w, s, a: clientbench.client_ingest(r, w, s),
    "http": lambda r, w, s, a: httpbench.http(r, w, s),
    "tls": lambda r, w, s, a: tlsbench.tls(r, w, s),
    "memory": lambda r, w, s, a: inprocess.memory_figures(r, s),
    "recovery": lambda r, w, s, a: recovery.recovery(r, w, s),
    "profile": lambda r, w, s, a: profiling.profile(r, w, s, a.profiler),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small counts, under 3 minutes (CI)")
    p.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument(
        "--profiler",
        choices=["auto", "py-spy", "cprofile", "none"],
        default="auto",
        help="auto: py-spy if installed, else cProfile; the full run profiles by default",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="parent of the temporary directory holding node data and the fsync file "
        "(default: the system temp dir); put it on the disk you want measured",
    )
    p.add_argument("--keep-work", action="store_true", help="keep node data and logs")
    args = p.parse_args(argv)
    unknown = {n for n in (args.only + "," + args.skip).split(",") if n} - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def selected(args: argparse.Namespace, s: Settings) -> list[str]:
    names = [n for n in args.only.split(",") if n] or list(SECTIONS)
    skip = {n for n in args.skip.split(",") if n}
    if not args.only and (not s.profile or args.profiler == "none"):
        skip.add("profile")
    return [n for n in names if n not in skip]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    s = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="unimeter-bench-", dir=args.work_dir))
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    res = Results(s, command)
    res.machine = machine_info(work)
    began = time.monotonic()
    print(f"{command}: {s.name} run, work dir {work}", flush=True)
    try:
        for name in selected(args, s):
            print(f"[{name}]", flush=True)
            started = time.monotonic()
            busy0, own0 = procs.cpu_snapshot()
            try:
                SECTIONS[name](res, work, s, args)
            except Exception:
                res.fail(name, traceback.format_exc())
            finally:
                procs.stop_all()
            wall = time.monotonic() - started
            busy1, own1 = procs.cpu_snapshot()
            # /proc/stat counts in clock ticks: over a section of a second or less, one tick
            # either way is a sizeable share, so such a section reports no figure.
            foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall if wall >= 1.0 else 0.0
            res.detail(f"seconds.{name}", round(wall, 2))
            res.detail(f"foreign_cpu.{name}", round(foreign, 3))
            if foreign > FOREIGN_CPU_WARN:
                print(f"  !! other programs kept {foreign:.2f} cores busy: figures are unreliable")
    finally:
        procs.stop_all()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    res.detail("seconds.total", round(time.monotonic() - began, 2))
    print()
    print(res.table())
    busy = {k: v for k, v in res.details.items() if k.startswith("foreign_cpu.") and v > 0.1}
    if busy:
        print(f"\nWARNING: other programs used CPU during {', '.join(busy)} (cores: {busy})")
    path = res.write(args.out)
    print(f"\n{len(res.figures)} figures in {time.monotonic() - began:.1f}s; JSON: {path}")
    if res.errors:
        print(f"FAILED sections: {', '.join(res.errors)}", file=sys.stderr)
        sys.exit(1)
