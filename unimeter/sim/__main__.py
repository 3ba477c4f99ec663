"""``python -m unimeter.sim``: run simulator seeds; exit 1 if any seed breaks an invariant.

    python -m unimeter.sim --seeds 200             seeds 0..199
    python -m unimeter.sim --seeds 1000 --start 5000 --jobs 2
    python -m unimeter.sim --seed 1234 -v          one seed, with what it exercised
    python -m unimeter.sim --seed 1234 --trace t.trace   and its trace (unimeter.trace replay)

Each seed prints its drawn settings, then its outcome. A failing seed prints its violations,
the command that replays it, and writes its trace (``--trace-dir``, default the working
directory) by running it again with tracing on, which also checks that it fails the same way.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence

from unimeter import testing_switches
from unimeter.sim.settings import draw_settings
from unimeter.sim.swarm import RunResult, run_seed
from unimeter.sim.world import Violation
from unimeter.tracefile import TraceWriter


class SeedTimeout(BaseException):
    """A seed ran past its wall-clock budget: something spins inside one event (a watchdog
    only: it never changes what a run that finishes does)."""


def _alarm(signum: int, frame: object) -> None:
    raise SeedTimeout


def _guarded(seed: int, scale: int, timeout_s: int) -> RunResult:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout_s)
    try:
        return run_seed(seed, scale=scale)
    except SeedTimeout:
        result = RunResult(seed, draw_settings(seed, scale), [])
        where = "".join(traceback.format_exc(limit=-12))
        result.violations.append(
            Violation("Hang", 0, f"no end after {timeout_s}s of wall time:\n{where}")
        )
        return result
    finally:
        signal.alarm(0)


def _run(args: tuple[int, int, int]) -> RunResult:
    return _guarded(*args)


def _results(seeds: list[int], scale: int, jobs: int, timeout_s: int) -> Iterator[RunResult]:
    if jobs <= 1:
        for seed in seeds:
            yield _guarded(seed, scale, timeout_s)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_run, [(s, scale, timeout_s) for s in seeds], chunksize=4)


def write_trace(seed: int, scale: int, path: str) -> RunResult:
    with open(path, "wb") as f:
        writer = TraceWriter(f, {"source": "sim", "seed": seed, "scale": scale})
        return run_seed(seed, scale=scale, tracer=writer)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m unimeter.sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seeds", type=int, default=1, help="how many seeds to run")
    p.add_argument("--start", type=int, default=0, help="the first seed")
    p.add_argument("--seed", type=int, help="run exactly this seed")
    p.add_argument("--scale", type=int, default=1, help="multiply workload and safety phase")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument(
        "--seed-timeout",
        type=int,
        default=300,
        metavar="SECONDS",
        help="wall-clock watchdog per seed (a run that spins is reported as Hang)",
    )
    p.add_argument("--trace", help="write the (single) seed's trace to this file")
    p.add_argument("--trace-dir", default=".", help="where failing seeds' traces go")
    p.add_argument(
        "--broken",
        choices=[n.lower() for n in testing_switches.NAMES],
        help="turn on one deliberate bug (unimeter/testing_switches.py)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also print each run's stats")
    p.add_argument("-q", "--quiet", action="store_true", help="print failures and the total")
    a = p.parse_args(argv)
    if a.broken:
        setattr(testing_switches, a.broken.upper(), True)
    seeds = [a.seed] if a.seed is not None else list(range(a.start, a.start + a.seeds))
    if a.trace and len(seeds) == 1:
        result = write_trace(seeds[0], a.scale, a.trace)
        _report(result, a.verbose, a.quiet)
        print(f"trace written to {a.trace}")
        return 0 if result.ok else 1
    started = time.perf_counter()
    failed: list[RunResult] = []
    events = 0
    totals: Counter[str] = Counter()
    for result in _results(seeds, a.scale, a.jobs, a.seed_timeout):
        events += result.events
        totals.update({k: v for k, v in result.stats.items() if isinstance(v, int)})
        _report(result, a.verbose, a.quiet)
        if not result.ok:
            failed.append(result)
    elapsed = time.perf_counter() - started
    print(
        f"{len(seeds)} seed(s) {seeds[0]}..{seeds[-1]}: {len(seeds) - len(failed)} passed, "
        f"{len(failed)} failed, {elapsed:.1f}s ({len(seeds) / max(elapsed, 1e-9):.2f} seeds/s, "
        f"{events} events)"
    )
    print("exercised: " + " ".join(f"{k}={v}" for k, v in sorted(totals.items())))
    for result in failed:
        if any(v.checker == "Hang" for v in result.violations):
            print(f"FAILED seed {result.seed} (Hang): python -m unimeter.sim --seed {result.seed}")
            continue
        path = os.path.join(a.trace_dir, f"sim-seed-{result.seed}.trace")
        again = write_trace(result.seed, a.scale, path)
        same = [str(v) for v in again.violations] == [str(v) for v in result.violations]
        broken = f" --broken {a.broken}" if a.broken else ""
        scale = f" --scale {a.scale}" if a.scale != 1 else ""
        print(
            f"FAILED seed {result.seed}: replay with: python -m unimeter.sim --seed "
            f"{result.seed}{scale}{broken}"
        )
        print(
            f"  trace: {path} (python -m unimeter.trace replay {path})"
            + ("" if same else "  NOTE: the traced rerun did not fail the same way")
        )
    return 1 if failed else 0


def _report(result: RunResult, verbose: bool, quiet: bool) -> None:
    s = result.settings
    if not quiet or not result.ok:
        print("\n".join(s.lines()))
    outcome = "ok" if result.ok else "FAILED"
    if not quiet or not result.ok:
        healed = "-" if result.healed_after_s is None else f"{result.healed_after_s:.2f}s"
        stats = f" stats={result.stats}" if verbose or not result.ok else ""
        print(
            f"  seed {result.seed}: {outcome} events={result.events} "
            f"virtual={result.virtual_s:.1f}s healed_after={healed} "
            f"wall={result.wall_s:.2f}s{stats}"
        )
    for v in result.violations:
        print(f"  VIOLATION {v}")


if __name__ == "__main__":
    sys.exit(main())
