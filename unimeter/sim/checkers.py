"""The invariants, each a checker object of its own, and the hub that feeds them.

The hub sees every step of every core (``before_step``/``after_step``), every reply a core
gives a client (``on_reply``, judged after the step that produced it), and every outcome a
client receives (``on_ingest_outcome``). From the replicas' commit indexes it assembles each
group's *committed log* (the truth every replica must agree with) and feeds it, entry by entry,
to the plain partition model (``model.py``). The checkers:

- ``LeaderPerTerm``: at most one leader per (group, term), across crashes and restarts.
- ``CommittedPrefix``: every replica's committed entries equal the committed log, byte for
  byte (recovered logs included), and every committed entry is durable on a quorum.
- ``NoDoubleCount``: the committed log never holds a (producer, seq) twice, an event id twice,
  or the same client event (its ``tag``) twice: no event is counted twice anywhere.
- ``AggregatesMatchModel``: every answer a replica gives (client reads, probes during the run,
  the full sweep after healing: all five aggregations, periods, filters and breakdown cells,
  event listings) equals the model's at that replica's applied index.
- ``AlertsMatchModel``: the alerts each replica fires as it applies entries, and the alert log
  it lists (also as a live subscriber's catch-up pages), equal the model's.
- ``SyncAckedExactlyOnce``: a SYNC acknowledgement leaves only once its entry is committed,
  and after healing every SYNC-acknowledged event is in the log exactly once (or its event id
  is), applied on every replica.
- ``ReadYourWrites``: a read is answered at an applied index no lower than its ``min_index``,
  and includes every batch the client had a SYNC acknowledgement for when it sent the read.
- ``Convergence`` (in ``swarm.py``): healing reaches a quiet, agreeing cluster in time.
- ``CoreCrash``: a core raised (an assertion inside a core is a bug it caught itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unimeter import errors, limits
from unimeter.actors.effects import Effects, Outgoing
from unimeter.actors.partition import ClientRequest
from unimeter.consensus.codec import CATALOG_GROUP
from unimeter.consensus.config import Role
from unimeter.placement import replicas_of
from unimeter.sim.model import PartitionModel
from unimeter.state.entries import BatchEntry, Entry
from unimeter.state.records import decode_entry
from unimeter.wire import messages as m

if TYPE_CHECKING:
    from unimeter.sim.clients import Call, SimClient
    from unimeter.sim.cluster import Cluster
    from unimeter.sim.replica import SimReplica

_READS = (
    m.Query,
    m.QueryRealtime,
    m.QueryBreakdown,
    m.ListEvents,
    m.ListAlerts,
    m.SubscribeAlerts,
)


class Checker:
    name = "Checker"

    def __init__(self, hub: Checkers) -> None:
        self.hub = hub
        self.world = hub.world

    def fail(self, message: str) -> None:
        self.world.fail(self.name, message)


# ---------------------------------------------------------------------- the committed log


class CommittedLog:
    """One group's committed entries as the replicas reveal them: index i at ``entries[i-1]``."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.entries: list[tuple[int, bytes]] = []
        self.pending: dict[int, tuple[int, bytes]] = {}

    @property
    def frontier(self) -> int:
        return len(self.entries)


# ---------------------------------------------------------------------- checkers


class LeaderPerTerm(Checker):
    name = "LeaderPerTerm"

    def __init__(self, hub: Checkers) -> None:
        super().__init__(hub)
        self.leaders: dict[tuple[int, int], int] = {}

    def check(self, replica: SimReplica) -> None:
        raft = replica.core.raft
        if raft.role is not Role.LEADER:
            return
        key = (replica.group, raft.term)
        holder = self.leaders.setdefault(key, replica.node.node_id)
        if holder != replica.node.node_id:
            self.fail(
                f"group {replica.group} term {raft.term}: leaders {holder} and "
                f"{replica.node.node_id}"
            )


class CommittedPrefix(Checker):
    name = "CommittedPrefix"

    def scan(self, replica: SimReplica) -> None:
        raft = replica.core.raft
        commit = raft.commit_index
        start = max(replica.checked_commit, raft.snapshot_index) + 1
        if commit < start:
            return
        log = self.hub.log(replica.group)
        for index in range(start, commit + 1):
            found = raft.entries(index, index)
            if found:
                self._record(log, index, found[0].term, found[0].data, replica)
        replica.checked_commit = commit

    def _record(
        self, log: CommittedLog, index: int, term: int, data: bytes, replica: SimReplica
    ) -> None:
        if index <= log.frontier:
            known = log.entries[index - 1]
            if known != (term, data):
                self.fail(
                    f"{replica.name}: committed entry {index} is (term {term}, "
                    f"{len(data)} bytes) but the group committed (term {known[0]}, "
                    f"{len(known[1])} bytes){' with other bytes' if known[0] == term else ''}"
                )
            return
        log.pending[index] = (term, data)
        while log.frontier + 1 in log.pending:
            entry = log.pending.pop(log.frontier + 1)
            log.entries.append(entry)
            self._durable_on_quorum(log, log.frontier, entry)
            self.hub.committed(log.group, log.frontier, entry[1])

    def _durable_on_quorum(self, log: CommittedLog, index: int, entry: tuple[int, bytes]) -> None:
        members = self.hub.members_of(log.group)
        holders = 0
        for node_id in members:
            disk = self.hub.cluster.nodes[node_id].disks.get(log.group)
            if disk is None:
                continue
            if disk.snapshot_index >= index:
                holders += 1
            elif disk.first_index <= index <= disk.durable_index:
                payload = disk.records[index - disk.first_index]
                if int.from_bytes(payload[:8], "little") == entry[0] and payload[8:] == entry[1]:
                    holders += 1
        if holders < len(members) // 2 + 1:
            self.fail(
                f"group {log.group}: entry {index} (term {entry[0]}) is committed but durable "
                f"on only {holders} of {len(members)} replicas"
            )


class NoDoubleCount(Checker):
    name = "NoDoubleCount"

    def __init__(self, hub: Checkers) -> None:
        super().__init__(hub)
        self.batches: dict[int, dict[tuple[int, int], int]] = {}  # partition -> (pid, seq)
        self.ids: dict[int, dict[tuple[str, int, str], int]] = {}
        self.tags: dict[int, dict[str, int]] = {}

    def on_entry(self, partition: int, index: int, entry: Entry) -> None:
        if not isinstance(entry, BatchEntry):
            return
        batches = self.batches.setdefault(partition, {})
        ids = self.ids.setdefault(partition, {})
        tags = self.tags.setdefault(partition, {})
        for part in entry.parts:
            if not part.producer_id:
                continue
            key = (part.producer_id, part.seq)
            if key in batches:
                self.fail(
                    f"partition {partition}: producer {key[0]} seq {key[1]} committed "
                    f"twice, at {batches[key]} and {index}"
                )
            batches.setdefault(key, index)
        for logged in entry.stored_events():
            code = logged.metric_code
            account = logged.account_id
            eid = logged.event_id
            if eid is not None:
                ikey = (code, account, eid)
                if ikey in ids:
                    self.fail(
                        f"partition {partition}: event id {ikey} stored twice, at "
                        f"{ids[ikey]} and {index}"
                    )
                ids.setdefault(ikey, index)
            tag = (logged.properties or {}).get("tag")
            if tag is not None:
                if tag in tags:
                    self.fail(
                        f"partition {partition}: client event {tag} stored twice, at "
                        f"{tags[tag]} and {index}"
                    )
                tags.setdefault(tag, index)


class AggregatesMatchModel(Checker):
    name = "AggregatesMatchModel"

    def judge(
        self,
        replica: SimReplica,
        req: m.Request,
        got: tuple[int, Any],
        at: int,
        also_at: int | None = None,
        why: str = "",
    ) -> None:
        partition = replica.group
        expected = self.hub.model_answer(partition, req, at)
        if _same(expected, got):
            return
        if (
            also_at is not None
            and also_at != at
            and _same(self.hub.model_answer(partition, req, also_at), got)
        ):
            return
        self.fail(
            f"{replica.name} {why}at applied index {at} answered {req!r} with "
            f"{got!r}; the model says {expected!r}"
        )


class AlertsMatchModel(Checker):
    name = "AlertsMatchModel"

    def check_step(self, replica: SimReplica, before: int, fx: Effects) -> None:
        after = replica.partition.state.applied_index
        low = fx.install.meta.index if fx.install is not None else before
        if after <= low and not fx.alerts:
            return
        expected = self.hub.model(replica.group).alerts_between(low, after)
        if list(fx.alerts) != expected:
            self.fail(
                f"{replica.name} applying {low + 1}..{after} fired {list(fx.alerts)}; "
                f"the model fires {expected}"
            )


class SyncAckedExactlyOnce(Checker):
    name = "SyncAckedExactlyOnce"

    def __init__(self, hub: Checkers) -> None:
        super().__init__(hub)
        # (partition, producer, seq) -> (the request, the reply the client received)
        self.acked: dict[tuple[int, int, int], tuple[m.Ingest, m.IngestReply]] = {}

    def at_ack(self, replica: SimReplica, req: m.Ingest, reply: m.IngestReply) -> None:
        """A SYNC acknowledgement leaving a core: its batch must already be committed."""
        commit = replica.core.raft.commit_index
        index = self.hub.double.batches.get(req.partition, {}).get((req.producer_id, req.seq))
        if index is None or index > reply.log_index or commit < reply.log_index:
            self.fail(
                f"{replica.name} acknowledged SYNC batch producer {req.producer_id} seq "
                f"{req.seq} at log index {reply.log_index} (commit {commit}) but the "
                f"committed log holds it at {index}"
            )

    def received(self, req: m.Ingest, reply: m.IngestReply) -> None:
        n = len(req.batch)
        if reply.n_stored + reply.n_duplicates + reply.n_rejected != n:
            self.fail(f"reply {reply} does not account for the {n} events of seq {req.seq}")
        if req.sync:
            self.acked[(req.partition, req.producer_id, req.seq)] = (req, reply)

    def final(self) -> None:
        hub = self.hub
        for (p, pid, seq), (req, reply) in sorted(self.acked.items()):
            index = hub.double.batches.get(p, {}).get((pid, seq))
            if index is None:
                self.fail(
                    f"SYNC-acknowledged batch p{p} producer {pid} seq {seq} "
                    f"(log index {reply.log_index}) is not in the committed log"
                )
                continue
            if index == reply.log_index:
                entry = decode_entry(hub.log(p).entries[index - 1][1])
                assert isinstance(entry, BatchEntry)
                logged = sum(
                    part.n_stored
                    for part in entry.parts
                    if (part.producer_id, part.seq) == (pid, seq)
                )
                if logged != reply.n_stored:
                    self.fail(
                        f"seq {seq}: acknowledged {reply.n_stored} stored events, the "
                        f"log holds {logged}"
                    )
            rejected = {i for i, _ in reply.rejected}
            b = req.batch
            tags = hub.double.tags.get(p, {})
            ids = hub.double.ids.get(p, {})
            all_props, all_ids = b.properties, b.event_ids
            accounts, index_of = b.account_ids.tolist(), b.metric_index.tolist()
            for i in range(len(b)):
                if i in rejected:
                    continue
                props = all_props[i] if all_props is not None else None
                tag = (props or {}).get("tag")
                if tag in tags:
                    continue
                eid = all_ids[i] if all_ids is not None else None
                code = b.metric_codes[index_of[i]]
                if eid is not None and (code, accounts[i], eid) in ids:
                    continue
                self.fail(f"SYNC-acknowledged event {tag} (seq {seq}, p{p}) is not counted")


class ReadYourWrites(Checker):
    name = "ReadYourWrites"

    def check(self, replica: SimReplica, call: Call, out: Outgoing, at: int) -> None:
        req = call.request
        status = out.status
        min_index = getattr(req, "min_index", 0)
        acked: tuple[tuple[int, int], ...] = call.context  # type: ignore[assignment]
        if status == errors.Status.INVALID_REQUEST:
            # The only refusal about min_index: beyond the leader's log. An index the client
            # was SYNC-acknowledged is committed, so in every later leader's log.
            refused = "min_index" in getattr(out.message, "message", "")
            if refused and acked and min_index <= max(index for _, index in acked):
                self.fail(
                    f"{replica.name} refused min_index {min_index} of a client whose "
                    f"SYNC acknowledgements reach that far"
                )
            return
        if status != errors.Status.OK:
            return
        if at < min_index:
            self.fail(f"{replica.name} answered {req!r} at applied index {at} < min_index")
        pid = call.client.session.producer_id
        batches = self.hub.double.batches.get(replica.group, {})
        for seq, _ in acked:
            index = batches.get((pid, seq))
            if index is None or index > at:
                self.fail(
                    f"{replica.name} answered at applied index {at} without the client's "
                    f"SYNC-acknowledged seq {seq} (log index {index})"
                )


class CoreCrash(Checker):
    name = "CoreCrash"


# ---------------------------------------------------------------------- the hub


@dataclass(slots=True)
class _Queued:
    replica: SimReplica
    out: Outgoing


class Checkers:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.world = cluster.world
        self._logs: dict[int, CommittedLog] = {}
        self._models: dict[int, PartitionModel] = {}
        self._members: dict[int, tuple[int, ...]] = {}
        self._queued: list[_Queued] = []
        self._answers: dict[tuple[int, int, int, m.Request], tuple[int, Any]] = {}
        self.leaders = LeaderPerTerm(self)
        self.prefix = CommittedPrefix(self)
        self.double = NoDoubleCount(self)
        self.aggregates = AggregatesMatchModel(self)
        self.alerts = AlertsMatchModel(self)
        self.sync_acked = SyncAckedExactlyOnce(self)
        self.ryw = ReadYourWrites(self)
        self.crash = CoreCrash(self)
        # What the run exercised (reported per seed and summed by the command line).
        self.counts: dict[str, int] = dict.fromkeys(
            ("steps", "reads_judged", "sync_acks", "alerts", "snapshot_installs"), 0
        )

    # ------------------------------------------------------------------ groups

    def members_of(self, group: int) -> tuple[int, ...]:
        found = self._members.get(group)
        if found is None:
            members = self.cluster.members
            if group != CATALOG_GROUP:
                rf = min(self.cluster.settings.replication_factor, len(members))
                members = replicas_of(group, members, rf)
            found = self._members[group] = members
        return found

    def log(self, group: int) -> CommittedLog:
        found = self._logs.get(group)
        if found is None:
            found = self._logs[group] = CommittedLog(group)
        return found

    def model(self, partition: int) -> PartitionModel:
        found = self._models.get(partition)
        if found is None:
            found = self._models[partition] = PartitionModel(partition)
        return found

    def committed(self, group: int, index: int, data: bytes) -> None:
        """Entry ``index`` of ``group`` joined the committed log."""
        if group == CATALOG_GROUP:
            return
        entry = decode_entry(data) if data else None
        if entry is not None:
            self.double.on_entry(group, index, entry)
        self.model(group).apply(index, entry)

    # ------------------------------------------------------------------ steps

    def on_replica_start(self, replica: SimReplica) -> None:
        replica.checked_commit = 0

    def before_step(self, replica: SimReplica) -> int:
        return int(replica.core.state.applied_index)

    def after_step(self, replica: SimReplica, before: int, fx: Effects) -> None:
        counts = self.counts
        counts["steps"] += 1
        if fx.alerts:
            counts["alerts"] += len(fx.alerts)
        if fx.install is not None:
            counts["snapshot_installs"] += 1
        self.leaders.check(replica)
        self.prefix.scan(replica)
        if replica.group != CATALOG_GROUP:
            self.alerts.check_step(replica, before, fx)
        if self._queued:
            queued, self._queued = self._queued, []
            for q in queued:
                self._judge_reply(q.replica, q.out, before)

    def core_failed(self, replica: SimReplica, text: str) -> None:
        self.crash.fail(text)
        replica.node.stop(graceful=False)
        try:  # what the failing core had committed still counts (it may be the evidence)
            self.prefix.scan(replica)
        except Exception as exc:  # the core is in whatever state its exception left
            self.world.note(f"scan after the core failure raised {exc!r}")

    # ------------------------------------------------------------------ replies

    def on_reply(self, replica: SimReplica, out: Outgoing) -> None:
        self._queued.append(_Queued(replica, out))

    def judge_now(self, replica: SimReplica, out: Outgoing) -> None:
        """A read answered outside any step (the connection's read fast path): judged against
        the state as it is now."""
        self._judge_reply(replica, out, int(replica.core.state.applied_index))

    def _judge_reply(self, replica: SimReplica, out: Outgoing, before: int) -> None:
        call: Call | None = getattr(out.token, "call", None)
        if call is None:
            return
        req = call.request
        if isinstance(req, m.Ingest):
            if req.sync and out.status == errors.Status.OK:
                assert isinstance(out.message, m.IngestReply)
                self.counts["sync_acks"] += 1
                self.sync_acked.at_ack(replica, req, out.message)
            return
        if not isinstance(req, _READS):
            return
        at = replica.partition.state.applied_index
        self.ryw.check(replica, call, out, at)
        if out.status in (errors.Status.NOT_LEADER, errors.Status.UNAVAILABLE):
            return
        if out.status == errors.Status.INVALID_REQUEST and "min_index" in getattr(
            out.message, "message", ""
        ):
            return  # an ASYNC write the client saw acknowledged was lost with its leader
        self.counts["reads_judged"] += 1
        self.aggregates.judge(replica, req, (out.status, out.message), at, also_at=before)

    def on_ingest_outcome(
        self, client: SimClient, req: m.Ingest, group: object, outcome: object
    ) -> None:
        if isinstance(outcome, m.IngestReply):
            self.sync_acked.received(req, outcome)

    # ------------------------------------------------------------------ the model's answers

    def model_answer(self, partition: int, req: m.Request, at: int) -> tuple[int, Any]:
        now = self.world.now if isinstance(req, m.QueryRealtime) else 0
        key = (partition, at, now, req)
        found = self._answers.get(key)
        if found is None:
            found = self._answers[key] = _model_read(self.model(partition), req, at, self.world.now)
            if len(self._answers) > 4096:
                self._answers.clear()
        return found

    def state_answer(self, replica: SimReplica, req: m.Request) -> tuple[int, Any]:
        out = replica.partition._answer_read(ClientRequest(None, req), self.world.now)  # type: ignore[arg-type]
        return out.status, out.message


def _model_read(model: PartitionModel, req: m.Request, at: int, now: int) -> tuple[int, Any]:
    try:
        if isinstance(req, m.Query):
            value = model.query(
                req.metric_code, req.account_id, req.start_us, req.end_us, req.filters, at
            )
            return 0, m.AggReply(
                value=value, period_start_us=req.start_us, period_end_us=req.end_us
            )
        if isinstance(req, m.QueryRealtime):
            value, start, end = model.query_realtime(req.metric_code, req.account_id, now, at)
            return 0, m.AggReply(value=value, period_start_us=start, period_end_us=end)
        if isinstance(req, m.QueryBreakdown):
            cells = model.breakdown(
                req.metric_code,
                req.account_id,
                req.start_us,
                req.end_us,
                req.group_by,
                req.filters,
                at,
            )
            return 0, m.BreakdownReply(cells=cells)
        if isinstance(req, m.ListEvents):
            limit = min(req.limit, limits.list_page_events_max)
            events, nxt = model.list_events(
                req.account_id, req.since_us, req.until_us, req.after_offset, limit, at
            )
            return 0, m.EventsPage(events=events, next_offset=nxt)
        if isinstance(req, m.ListAlerts):
            limit = min(req.limit, limits.list_page_alerts_max)
            alerts, cursor = model.list_alerts(req.account_id, req.after_cursor, limit, at)
            return 0, m.AlertsPage(alerts=alerts, next_cursor=cursor)
        if isinstance(req, m.SubscribeAlerts):
            limit = min(req.limit, limits.list_page_alerts_max)
            alerts, cursor = model.list_alerts(req.account_id, req.after_cursor, limit, at)
            return 0, m.Subscribed(
                alerts=alerts, next_cursor=cursor, live_from=model.alerts_fired_by(at)
            )
    except errors.UnimeterError as exc:
        return int(exc.status), None
    raise AssertionError(f"not a read: {req!r}")


def _same(expected: tuple[int, Any], got: tuple[int, Any]) -> bool:
    if expected[0] != got[0]:
        return False
    return expected[0] != 0 or expected[1] == got[1]
