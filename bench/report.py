"""Figures, their limits and targets; the printed table, the JSON file and the Markdown table.

A ``Figure`` is one number with its unit. Most name a limit figure measured earlier in the same
run (``limit_key``); ``ratio`` is always ``value / limit``, so for throughput it is the share of
the ceiling reached (1.0 is the ceiling) and for latency or memory how many times the floor it
costs (1.0 is the floor). ``target`` is the bar, where there is one: an absolute value, and/or
``target_ratio``, a bar on ``ratio`` (the product's bars are mostly ratios to a limit of the
same run, e.g. "the realistic workload at >= 0.5 of the plain figure"); a figure with both
meets its target when it clears both. A figure may also
name a *baseline*, another figure of the same run it is a variant of (a 3-node cluster's figure
names the single node's): ``baseline_ratio`` is ``value / baseline`` and the tables show it in
two more columns when any figure has one.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.procs import REPO_ROOT


@dataclass(slots=True, kw_only=True)
class Figure:
    key: str
    label: str
    value: float | None
    unit: str
    limit_key: str | None = None
    limit: float | None = None
    target: float | None = None
    target_ratio: float | None = None  # a bar on value / limit
    lower_is_better: bool = False
    note: str = ""
    baseline_key: str | None = None
    baseline: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.limit:
            return None
        return self.value / self.limit

    @property
    def baseline_ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def meets_target(self) -> bool | None:
        """None when there is no bar, or when the value (or the limit a ratio bar needs) is
        missing."""
        checks: list[tuple[float, float]] = []
        if self.target is not None and self.value is not None:
            checks.append((self.value, self.target))
        if self.target_ratio is not None and self.ratio is not None:
            checks.append((self.ratio, self.target_ratio))
        if not checks or self.value is None:
            return None
        if self.target_ratio is not None and self.ratio is None:
            return None
        if self.lower_is_better:
            return all(got <= bar for got, bar in checks)
        return all(got >= bar for got, bar in checks)

    def target_text(self) -> str:
        """The bar as the tables print it: ``1,200,000``, ``>= 0.50x limit`` or both."""
        parts = []
        if self.target is not None:
            parts.append(fmt(self.target, self.unit))
        if self.target_ratio is not None:
            parts.append(f"{'<=' if self.lower_is_better else '>='} {self.target_ratio:.2f}x limit")
        return "; ".join(parts)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("ev/s", "ops/s", "req/s", "B/cell", "B/event", "B"):
        return f"{value:,.0f}"
    if unit in ("us", "calls"):
        return f"{value:,.1f}"
    if unit in ("s", "s/M ev"):
        return f"{value:,.3f}"
    return f"{value:,.2f}"


class Results:
    def __init__(self, settings: Any, command: str) -> None:
        self.settings = settings
        self.command = command
        self.started = datetime.now(UTC)
        self.figures: dict[str, Figure] = {}
        self.details: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.machine: dict[str, Any] = {}

    def value(self, key: str) -> float | None:
        fig = self.figures.get(key)
        return None if fig is None else fig.value

    def add(self, fig: Figure) -> Figure:
        """Record ``fig``, taking its limit's (and baseline's) value from the figure named by
        ``limit_key`` (``baseline_key``)."""
        if fig.limit_key is not None and fig.limit is None:
            fig.limit = self.value(fig.limit_key)
        if fig.baseline_key is not None and fig.baseline is None:
            fig.baseline = self.value(fig.baseline_key)
        self.figures[fig.key] = fig
        print(f"  {fig.label}: {fmt(fig.value, fig.unit)} {fig.unit}", flush=True)
        return fig

    def add_latency(
        self,
        key: str,
        label: str,
        lat: dict[str, float],
        *,
        limit_key: str | None = None,
        target_p50: float | None = None,
        notes: dict[str, str] | None = None,
    ) -> None:
        """The p50 and p99 figures of one latency distribution (microseconds): keys
        ``{key}.p50``/``.p99``, limits ``{limit_key}.p50``/``.p99``, a target on p50 only."""
        for p in ("p50", "p99"):
            self.add(
                Figure(
                    key=f"{key}.{p}",
                    label=f"{label}, {p}",
                    value=lat[p],
                    unit="us",
                    limit_key=f"{limit_key}.{p}" if limit_key is not None else None,
                    target=target_p50 if p == "p50" else None,
                    lower_is_better=True,
                    note=notes[p] if notes is not None else "",
                )
            )

    def detail(self, key: str, data: Any) -> None:
        self.details[key] = data

    def fail(self, section: str, message: str) -> None:
        self.errors[section] = message
        print(f"  !! {section} failed: {message.splitlines()[-1] if message else ''}", flush=True)

    # ------------------------------------------------------------------ output

    @property
    def has_baselines(self) -> bool:
        return any(fig.baseline is not None for fig in self.figures.values())

    def head(self) -> list[str]:
        head = ["figure", "value", "limit (same run)", "ratio", "target", "met"]
        if self.has_baselines:
            head += ["baseline (same run)", "ratio to baseline"]
        return head

    def rows(self) -> list[list[str]]:
        out = []
        with_baselines = self.has_baselines
        for fig in self.figures.values():
            ratio = fig.ratio
            meets = fig.meets_target
            row = [
                fig.label,
                f"{fmt(fig.value, fig.unit)} {fig.unit}",
                "" if fig.limit is None else f"{fmt(fig.limit, fig.unit)} ({fig.limit_key})",
                "" if ratio is None else f"{ratio:.3f}",
                fig.target_text(),
                "" if meets is None else ("yes" if meets else "NO"),
            ]
            if with_baselines:
                base = fig.baseline_ratio
                row += [
                    ""
                    if fig.baseline is None
                    else f"{fmt(fig.baseline, fig.unit)} ({fig.baseline_key})",
                    "" if base is None else f"{base:.3f}",
                ]
            out.append(row)
        return out

    def table(self) -> str:
        head = self.head()
        rows = [head, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = []
        for n, row in enumerate(rows):
            cells = [
                c.ljust(w) if i in (0, 2, 6) else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        head = self.head()
        align = ["---", "---:", "---", "---:", "---:", ":-:", "---", "---:"][: len(head)]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
        for row in self.rows():
            lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "started_utc": self.started.isoformat(timespec="seconds"),
            "settings": asdict(self.settings),
            "machine": self.machine,
            "figures": [
                {
                    **asdict(f),
                    "ratio": f.ratio,
                    "meets_target": f.meets_target,
                    "baseline_ratio": f.baseline_ratio,
                }
                for f in self.figures.values()
            ],
            "details": self.details,
            "errors": self.errors,
        }

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        path = directory / f"bench-{self.settings.name}-{stamp}.json"
        text = json.dumps(self.to_json(), indent=1, default=str)
        path.write_text(text)
        (directory / f"latest-{self.settings.name}.json").write_text(text)
        (directory / f"latest-{self.settings.name}.md").write_text(self.markdown() + "\n")
        return path


# --------------------------------------------------------------------------- machine


def _first_match(path: str, pattern: str) -> str | None:
    try:
        found = re.search(pattern, Path(path).read_text(), re.MULTILINE)
    except OSError:
        return None
    return found.group(1).strip() if found else None


def _mount_of(path: Path) -> dict[str, str]:
    best: dict[str, str] = {}
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best
    target = str(path.resolve())
    for line in lines:
        device, mount, fstype, options = line.split()[:4]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best.get("mount", "")):
            best = {"device": device, "mount": mount, "fstype": fstype, "options": options}
    return best


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.rstrip("\n")  # keep leading spaces: porcelain status columns


def machine_info(work: Path) -> dict[str, Any]:
    mount = _mount_of(work)
    device = Path(mount.get("device", "")).name
    rotational = _first_match(f"/sys/block/{device}/queue/rotational", r"(\d)")
    usage = shutil.disk_usage(work)
    mem_kb = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$"),
        "memory_bytes": int(mem_kb) * 1024 if mem_kb else None,
        "disk": {
            **mount,
            "rotational": rotational,
            "size_bytes": usage.total,
            "free_bytes": usage.free,
            "work_dir": str(work),
        },
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "uvloop": _version("uvloop"),
        "cbor2": _version("cbor2"),
        "pyroaring": _version("pyroaring"),
        "git_commit": _git("rev-parse", "HEAD").strip(),
        "git_dirty_files": [
            line[3:] for line in _git("status", "--porcelain", "unimeter").splitlines()
        ],
    }
