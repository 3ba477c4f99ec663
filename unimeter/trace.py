"""Replay traces of the pure cores offline, and summarise them (docs/architecture.md §1).

A core is a pure function of where it started and of the messages it was stepped with (with
their ``now``), so a trace holding exactly that replays to the same state, step for step. The
node writes one with ``python -m unimeter.node --trace FILE``; a failing simulator seed writes
the same format (``unimeter/tracefile.py`` describes it). ``python -m unimeter.trace replay
FILE`` re-runs the cores and prints each step and the resulting state, checking each against
the state the recording holds; ``python -m unimeter.trace summary FILE`` says what each actor
did. docs/testing.md shows how to read the output.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from unimeter.actors.catalog import CatalogCore
from unimeter.actors.partition import ClientRequest, IngestGroup
from unimeter.actors.replicated import PeerMessage
from unimeter.consensus import codec as raft_codec
from unimeter.consensus.codec import CATALOG_GROUP
from unimeter.consensus.messages import AppendEntries
from unimeter.state.entries import BatchEntry
from unimeter.state.partition_state import TS_MAX_US, TS_MIN_US, PartitionState
from unimeter.state.records import decode_entry
from unimeter.tracefile import (
    MAGIC,
    Actor,
    ActorTracer,
    Core,
    CoreSpec,
    TraceError,
    TraceWriter,
    actor_name,
    build_core,
    decode_message,
    decode_spec,
    describe,
    encode_message,
    header,
    post_state,
    read_records,
)
from unimeter.wire import messages as m
from unimeter.wire.bodies import decode_request

__all__ = [
    "ActorTracer",
    "Core",
    "CoreSpec",
    "Replayer",
    "Stepped",
    "TraceError",
    "TraceWriter",
    "build_core",
    "decode_message",
    "encode_message",
    "main",
    "replay",
    "summary",
]


# ---------------------------------------------------------------------- replay


@dataclass(slots=True)
class Stepped:
    number: int  # 1-based, over every step record of the file
    actor: Actor
    now_us: int
    message: object
    recorded: list[Any] | None  # the post state the trace holds
    replayed: list[Any] | None  # the post state of the replay (None: the step raised)
    error: BaseException | None
    replies: int
    sends: int

    @property
    def diverged(self) -> bool:
        return self.recorded != self.replayed


class Replayer:
    """Rebuilds the traced cores and steps them with the traced messages."""

    def __init__(self, only: Callable[[Actor], bool] | None = None) -> None:
        self.only = only
        self.cores: dict[Actor, Core] = {}
        self.steps = 0
        self.first_us: int | None = None
        self.accounts: dict[int, set[int]] = {}  # partition -> accounts seen in its entries

    def feed(self, record: list[Any]) -> Stepped | str | None:
        """Apply one record; a ``Stepped`` for a step, a line of text for a start, else None."""
        kind = record[0]
        if kind == "step":
            self.steps += 1
            actor = (record[1][0], record[1][1])
            if self.first_us is None:
                self.first_us = record[2]
            if self.only is not None and not self.only(actor):
                return None
            return self._step(actor, record)
        if kind == "start":
            spec = decode_spec(record[2])
            if self.only is not None and not self.only(spec.actor):
                return None
            self.cores[spec.actor] = build_core(spec)
            for e in spec.recovered.entries:
                self._note_entry(spec.group, e.data)
            rec = spec.recovered
            snap = f" snapshot@{rec.snapshot.index}" if rec.snapshot else ""
            return (
                f"start {actor_name(spec.actor)} term={rec.hard_state.term} "
                f"commit={rec.hard_state.commit} log_entries={len(rec.entries)}{snap} "
                f"rng_seed={spec.rng_seed}"
            )
        if kind == "compact":
            actor = (record[1][0], record[1][1])
            core = self.cores.get(actor)
            if core is not None:
                core.raft.compact(record[2])
        return None

    def _note_accounts(self, group: int, msg: object) -> None:
        if group == CATALOG_GROUP:
            return
        if isinstance(msg, IngestGroup):
            for request in msg.requests:
                self._note_accounts(group, request)
        elif isinstance(msg, ClientRequest) and isinstance(msg.request, m.Ingest):
            self.accounts.setdefault(group, set()).update(msg.request.batch.account_ids.tolist())
        elif isinstance(msg, PeerMessage) and isinstance(msg.message, AppendEntries):
            for e in msg.message.entries:
                self._note_entry(group, e.data)

    def _note_entry(self, group: int, data: bytes) -> None:
        if group != CATALOG_GROUP and data:
            entry = decode_entry(data)
            if isinstance(entry, BatchEntry):
                for part in entry.parts:
                    self.accounts.setdefault(group, set()).update(part.batch.account_ids.tolist())

    def _step(self, actor: Actor, record: list[Any]) -> Stepped:
        core = self.cores.get(actor)
        if core is None:
            raise TraceError(f"step {self.steps} for {actor_name(actor)} before its start")
        msg = decode_message(record[3])
        self._note_accounts(actor[1], msg)
        error: BaseException | None = None
        replies = sends = 0
        replayed: list[Any] | None = None
        try:
            fx = core.step(msg, record[2])
        except Exception as exc:  # the recorded run raised here too, or the replay diverged
            error = exc
        else:
            replayed = post_state(core)
            replies, sends = len(fx.replies), len(fx.sends)
        return Stepped(
            number=self.steps,
            actor=actor,
            now_us=record[2],
            message=msg,
            recorded=record[4],
            replayed=replayed,
            error=error,
            replies=replies,
            sends=sends,
        )

    def line(self, s: Stepped) -> str:
        t = (s.now_us - (self.first_us or 0)) / 1_000_000
        head = f"#{s.number} t=+{t:.6f} {actor_name(s.actor)} {describe(s.message)}"
        if s.error is not None:
            return f"{head}\n    -> raised {s.error!r}"
        role, term, commit, applied = s.replayed or ("?", 0, 0, 0)
        out = f"{head}\n    -> {role} term={term} commit={commit} applied={applied}"
        if s.replies or s.sends:
            out += f" replies={s.replies} sends={s.sends}"
        return out


def state_summary(actor: Actor, core: Core, accounts: Iterable[int] = ()) -> list[str]:
    """The state a replay ended in: Raft position and, for a partition, its aggregates."""
    raft = core.raft
    lines = [
        f"{actor_name(actor)}: {raft.role.value} term={raft.term} leader={raft.leader_id} "
        f"commit={raft.commit_index} applied={core.state.applied_index} "
        f"last_index={raft.last_index} snapshot_index={raft.snapshot_index}"
    ]
    if isinstance(core, CatalogCore):
        codes = ", ".join(lm.schema.code for lm in core.state.sorted())
        lines.append(f"  catalog version={core.state.version} metrics=[{codes}]")
        return lines
    state = core.state
    digest = hashlib.sha256(state.snapshot()).hexdigest()[:16]
    lines.append(
        f"  catalog_version={state.catalog_version} next_offset={state.next_offset} "
        f"state_sha256={digest}"
    )
    for code, account, value in aggregates(state, accounts):
        lines.append(
            f"  {code} account={account}: count={value.count} sum={value.sum} max={value.max} "
            f"last={value.last_value} alert_flags={value.alert_flags}"
        )
    return lines


def aggregates(state: PartitionState, accounts: Iterable[int]) -> list[tuple[str, int, Any]]:
    """Every live metric's all-time aggregate for each of ``accounts`` that has events."""
    out = []
    for lm in state.live_metrics():
        code = lm.schema.code
        for account in sorted(accounts):
            value = state.query(code, account, TS_MIN_US, TS_MAX_US)
            if value.count or value.last_value is not None:
                out.append((code, account, value))
    return out


def replay(
    path: str,
    *,
    only: Callable[[Actor], bool] | None = None,
    until: int | None = None,
    out: Callable[[str], None] = print,
    quiet: bool = False,
) -> tuple[Replayer, list[Stepped]]:
    """Replay ``path``; returns the replayer (its cores hold the end state) and every step
    whose replayed post state differs from the recorded one."""
    rp = Replayer(only)
    diverged: list[Stepped] = []
    for record in read_records(path):
        if record[0] == MAGIC:
            continue
        if record[0] == "note":
            if not quiet and only is None:
                out(f"note t=+{(record[1] - (rp.first_us or record[1])) / 1e6:.6f} {record[2]}")
            continue
        result = rp.feed(record)
        if isinstance(result, str):
            if not quiet:
                out(result)
        elif result is not None:
            if not quiet:
                out(rp.line(result))
            if result.diverged:
                diverged.append(result)
                out(
                    f"DIVERGED at step #{result.number} ({actor_name(result.actor)}): "
                    f"recorded {result.recorded}, replayed {result.replayed}"
                )
        if until is not None and rp.steps >= until:
            break
    return rp, diverged


# ---------------------------------------------------------------------- summary


def summary(path: str, out: Callable[[str], None] = print) -> None:
    """What happened per actor, from the records alone (no replay)."""
    meta = header(path)
    out("trace " + " ".join(f"{k}={v}" for k, v in sorted(meta.items())))
    kinds: dict[Actor, Counter[str]] = {}
    starts: Counter[Actor] = Counter()
    last: dict[Actor, list[Any] | None] = {}
    span: dict[Actor, tuple[int, int]] = {}
    leader_terms: dict[Actor, set[int]] = {}
    events: Counter[Actor] = Counter()
    notes = 0
    for record in read_records(path):
        kind = record[0]
        if kind == "note":
            notes += 1
            continue
        if kind not in ("start", "step"):
            continue
        actor = (
            (record[1][0], record[1][1])
            if kind == "step"
            else (record[2]["node"], record[2]["group"])
        )
        if kind == "start":
            starts[actor] += 1
            continue
        msg = record[3]
        tag = msg[0]
        if tag == "peer":
            tag = "peer:" + type(raft_codec.decode_message(msg[1])[1]).__name__
        elif tag in ("client", "catalog_request"):
            tag = f"{tag}:{m.Kind(msg[2]).name.lower()}"
            if msg[2] == m.Kind.INGEST:
                events[actor] += len(decode_request(m.Kind.INGEST, msg[3]).batch)  # type: ignore[union-attr]
        kinds.setdefault(actor, Counter())[tag] += 1
        first, _ = span.get(actor, (record[2], record[2]))
        span[actor] = (first, record[2])
        post = record[4]
        last[actor] = post
        if post is not None and post[0] == "leader":
            leader_terms.setdefault(actor, set()).add(post[1])
    for actor in sorted(set(kinds) | set(starts)):
        counts = kinds.get(actor, Counter())
        first, end = span.get(actor, (0, 0))
        post = last.get(actor)
        where = (
            "raised"
            if post is None
            else (f"{post[0]} term={post[1]} commit={post[2]} applied={post[3]}")
        )
        out(
            f"{actor_name(actor)}: starts={starts[actor]} steps={sum(counts.values())} "
            f"span_s={(end - first) / 1e6:.3f} led_terms={sorted(leader_terms.get(actor, ()))} "
            f"events_ingested={events[actor]} last: {where}"
        )
        for tag, n in sorted(counts.items()):
            out(f"    {tag}: {n}")
    out(f"notes: {notes}")


# ---------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m unimeter.trace",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="re-run the cores, print each step and the end state")
    r.add_argument("file")
    r.add_argument("--partition", type=int, help="only this partition's replicas")
    r.add_argument("--catalog", action="store_true", help="only the catalog's replicas")
    r.add_argument("--node", type=int, help="only this node's cores")
    r.add_argument("--until", type=int, metavar="STEP", help="stop after step number STEP")
    r.add_argument("--quiet", action="store_true", help="print only the end state")
    r.add_argument(
        "--account",
        type=int,
        action="append",
        default=[],
        help="also summarise this account (accounts seen in the trace always are)",
    )
    s = sub.add_parser("summary", help="what happened per actor")
    s.add_argument("file")
    a = p.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    if a.command == "summary":
        summary(a.file)
        return 0

    def only(actor: Actor) -> bool:
        node, group = actor
        if a.node is not None and node != a.node:
            return False
        if a.partition is not None and group != a.partition:
            return False
        return not (a.catalog and group != CATALOG_GROUP)

    filtered = a.node is not None or a.partition is not None or a.catalog
    rp, diverged = replay(a.file, only=only if filtered else None, until=a.until, quiet=a.quiet)
    print(f"--- end state after {rp.steps} step(s)")
    for actor in sorted(rp.cores):
        accounts = rp.accounts.get(actor[1], set()) | set(a.account)
        for line in state_summary(actor, rp.cores[actor], accounts):
            print(line)
    if diverged:
        print(f"replay diverged from the recording at {len(diverged)} step(s)")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
