"""Where the node's time goes under ASYNC load, batch 500 (the figure with a target) and batch 1.

With py-spy (``pip install py-spy``) the node runs normally and is sampled from outside
(``py-spy record --pid``, 250 Hz, per thread, native frames included, no line numbers); the
event-loop thread's samples are then ranked by self time (the innermost frame, so time in C
such as a socket ``write`` shows as its own entry) and inclusive time, and summed per source
file. A sample is taken whenever the thread is not idle, including while it waits for a CPU:
on a machine whose two cores are shared with the load generator, that wait lands in whatever
the thread was doing, most often the system call that woke the generator up.

Without py-spy the node runs under cProfile (much slower: it counts every call) and the top
functions by own time and by cumulative time are kept instead.
"""

from __future__ import annotations

import io
import pstats
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench import driver, loadgen, settings
from bench.report import Results
from bench.scenarios import fresh_node, ingest_specs
from bench.settings import Settings

TOP = 25
SAMPLE_HZ = 250
_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^()]*)\)$")


def _short(frame: str) -> str:
    found = _FRAME.match(frame)
    if not found:
        return frame
    path = found.group("path")
    for marker in ("unimeter/", "site-packages/", "bench/"):
        if marker in path:
            path = (
                marker + path.split(marker, 1)[1]
                if marker != "site-packages/"
                else (path.split(marker, 1)[1])
            )
            break
    else:
        path = re.sub(r"^.*/lib/python3\.\d+/", "", path)
    return f"{found.group('name')} ({path})"


def _file_of(frame: str) -> str:
    found = _FRAME.match(frame)
    return found.group("path") if found else frame


def parse_collapsed(text: str) -> dict[str, Any]:
    """Shares of the event-loop (main) thread's samples, from py-spy's raw output: self time
    per frame and per file, and inclusive time of the product's own (``unimeter/``) frames."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    other_threads: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or ";" not in stack:
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        frames = [_short(f) for f in frames]
        if "MainThread" not in thread:
            other_threads[frames[-1] if frames else thread] += count
            continue
        total += count
        own[frames[-1]] += count
        by_file[_file_of(frames[-1])] += count
        for frame in set(frames):
            if "(unimeter/" in frame:  # the loop machinery above them is in every sample
                inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return (
            [(name, round(n / total, 4)) for name, n in counter.most_common(TOP)] if total else []
        )

    return {
        "main_thread_samples": total,
        "top_self": shares(own),
        "top_inclusive": shares(inclusive),
        "self_by_file": shares(by_file),
        "other_thread_samples": dict(other_threads.most_common(10)),
    }


def _py_spy(work: Path, s: Settings, exe: str, native: bool, batch: int) -> dict[str, Any]:
    out = work / "profile-py-spy.txt"
    out.unlink(missing_ok=True)
    spy: list[subprocess.Popen[bytes]] = []
    with fresh_node(work, "profile") as node:
        argv = [exe, "record", "--pid", str(node.child.pid), "--duration",
                str(int(s.profile_duration_s)), "--rate", str(SAMPLE_HZ), "--nolineno",
                "--threads", "--format", "raw", "-o", str(out)]  # fmt: skip
        if native:
            argv.append("--native")

        def attach() -> None:
            spy.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        outcome = driver.run_load(_load(node, s, batch), server=node.child, on_start=attach)
        try:
            _, err = spy[0].communicate(timeout=s.profile_duration_s + 60)
        except subprocess.TimeoutExpired:
            spy[0].kill()  # by its PID
            raise
    if spy[0].returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
    parsed = parse_collapsed(out.read_text())
    return {
        "tool": "py-spy" + (" --native" if native else ""),
        "events_per_s_while_profiled": outcome.events_per_s,
        "load": outcome.details(),
        **parsed,
    }


def _cprofile(work: Path, s: Settings) -> dict[str, Any]:
    out = work / "profile.cprofile"
    with fresh_node(work, "profile", prefix=("-m", "cProfile", "-o", str(out))) as node:
        outcome = driver.run_load(_load(node, s, 500), server=node.child)
        node.child.terminate()  # cProfile writes its file when the node exits cleanly
    stats = pstats.Stats(str(out))
    tables = {}
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(str(out), stream=text).sort_stats(order).print_stats(TOP)
        tables[order] = text.getvalue()
    return {
        "tool": "cProfile",
        "events_per_s_while_profiled": outcome.events_per_s,
        "total_calls": stats.total_calls,  # type: ignore[attr-defined]
        "tables": tables,
    }


def _load(node: Any, s: Settings, batch: int) -> list[loadgen.LoadSpec]:
    return ingest_specs(
        node,
        batch=batch,
        sync=False,
        processes=1,
        window=settings.WINDOW_ASYNC_B500 if batch > 1 else settings.WINDOW_ASYNC_B1,
        conns=1,
        duration_s=s.profile_duration_s + 1.5,
        frames=s.pool_frames_b500 * 2 if batch > 1 else s.pool_frames_b1,
    )


def profile(res: Results, work: Path, s: Settings, tool: str) -> None:
    """ASYNC batch 500 (the figure with a speed target), then batch 1 (per-request
    overhead), each on a fresh node."""
    exe = shutil.which("py-spy")
    if tool == "py-spy" and exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    if exe is None or tool == "cprofile":
        result = _cprofile(work, s)
        print(result["tables"]["tottime"][:3000])
        res.detail("profile.b500", result)
        return
    for batch in (500, 1):
        try:
            result = _py_spy(work, s, exe, native=True, batch=batch)
        except RuntimeError:  # --native needs unwinding support this build may lack
            result = _py_spy(work, s, exe, native=False, batch=batch)
        print(f"  batch {batch}: {result['events_per_s_while_profiled']:,.0f} ev/s while sampled")
        for name, share in result["top_self"][:12]:
            print(f"    {share * 100:5.1f}%  {name}")
        res.detail(f"profile.b{batch}", result)
