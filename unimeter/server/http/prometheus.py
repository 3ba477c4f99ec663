"""``GET /metrics``: the node's figures in the Prometheus text format, read when scraped.

Nothing here runs on the request path: the counters live where the work happens (plain ints
and ``observe.Histogram`` bucket lists on the node, its runtimes and its checkpointer), and this
collector reads them at scrape time through ``prometheus_client``'s metric families. A node
that is never scraped pays only for the counting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from unimeter.observe import Histogram

if TYPE_CHECKING:
    from unimeter.actors.runtime import ReplicaRuntime
    from unimeter.node import Node
    from unimeter.node_runtimes import PartitionRuntime
    from unimeter.server.http.alert_stream import AlertStreams

CONTENT_TYPE = CONTENT_TYPE_LATEST
_Family = type[GaugeMetricFamily] | type[CounterMetricFamily]


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _add(family: HistogramMetricFamily, values: list[str], hist: Histogram) -> None:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip([*map(repr, hist.bounds), "+Inf"], hist.counts, strict=True):
        running += count
        buckets.append((bound, running))
    family.add_metric(values, buckets, hist.total)


class NodeCollector(Collector):
    def __init__(self, node: Node, streams: AlertStreams | None = None) -> None:
        self.node = node
        self.streams = streams

    def collect(self) -> Iterator[Metric]:
        yield from self._node()
        yield from self._ingest()
        yield from self._requests()
        yield from self._replicas()
        yield from self._storage()
        yield from self._auth()
        yield from self._webhooks()

    def _node(self) -> Iterator[Metric]:
        node = self.node
        yield GaugeMetricFamily("unimeter_up", "1 while the node serves requests.", node.serving)
        yield GaugeMetricFamily(
            "unimeter_connections", "Open binary-protocol connections.", len(node.connections)
        )
        yield GaugeMetricFamily(
            "unimeter_disk_ok", "1 while free disk space is above the reserve.", node.disk_ok
        )
        yield GaugeMetricFamily(
            "unimeter_disk_free_bytes",
            "Free bytes on the data directory's filesystem (last check).",
            node.disk.free_bytes,
        )
        if self.streams is not None:
            yield GaugeMetricFamily(
                "unimeter_http_alert_streams", "Open alert streams (SSE).", self.streams.count
            )

    def _ingest(self) -> Iterator[Metric]:
        stats = self.node.stats.ingest
        yield CounterMetricFamily(
            "unimeter_events_ingested",
            "Events in ingest batches this node's partition leaders answered "
            "(stored + duplicates + rejected).",
            stats.ingested,
        )
        yield CounterMetricFamily("unimeter_events_stored", "Events stored.", stats.stored)
        yield CounterMetricFamily(
            "unimeter_events_duplicate",
            "Events not stored again: a known event_id or a retried batch.",
            stats.duplicates,
        )
        rejected = CounterMetricFamily(
            "unimeter_events_rejected",
            "Events refused one by one, by metric and reason (the rest of their batch stored).",
            labels=["metric", "reason"],
        )
        for (metric, reason), count in sorted(stats.rejected.items()):
            rejected.add_metric([metric, reason], count)
        yield rejected

    def _requests(self) -> Iterator[Metric]:
        latency = _histogram(
            "unimeter_request_duration_seconds",
            "Time from a request's arrival to its answer, by protocol and kind.",
            ["protocol", "kind"],
        )
        outcomes = CounterMetricFamily(
            "unimeter_requests",
            "Requests answered, by protocol, kind and status (the binary protocol's names).",
            labels=["protocol", "kind", "status"],
        )
        for (protocol, kind), stats in sorted(self.node.stats.requests.items()):
            _add(latency, [protocol, kind], stats.latency)
            for status, count in stats.by_status().items():
                outcomes.add_metric([protocol, kind, status], count)
        yield latency
        yield outcomes

    def _replicas(self) -> Iterator[Metric]:
        node = self.node
        parts = sorted(node.partitions.items())
        per_partition: list[tuple[str, _Family, str, Callable[[PartitionRuntime], float]]] = [
            ("partition_applied_index", GaugeMetricFamily, "Last log index applied.",
             lambda r: r.core.state.applied_index),
            ("partition_steps_total", CounterMetricFamily, "Messages stepped by the core.",
             lambda r: r.steps),
            ("partition_fsyncs_total", CounterMetricFamily, "fsyncs of the partition's log.",
             lambda r: r.fsyncs),
            ("mailbox_depth", GaugeMetricFamily, "Messages waiting in the partition mailbox.",
             lambda r: r.mailbox.stats().depth),
            ("mailbox_peak", GaugeMetricFamily, "Deepest the partition mailbox has been.",
             lambda r: r.mailbox.stats().peak),
            ("mailbox_rejected_total", CounterMetricFamily,
             "Sends refused with BACKPRESSURE (mailbox full).",
             lambda r: r.mailbox.stats().rejected),
        ]  # fmt: skip
        for name, family_class, doc, read in per_partition:
            family = family_class(
                f"unimeter_{name.removesuffix('_total')}", doc, labels=["partition"]
            )
            for p, runtime in parts:
                family.add_metric([str(p)], read(runtime))
            yield family
        if node.catalog is not None:
            stats = node.catalog.mailbox.stats()
            yield GaugeMetricFamily(
                "unimeter_catalog_mailbox_depth", "Messages waiting for the catalog.", stats.depth
            )
        runtimes: list[tuple[str, ReplicaRuntime]] = [(str(p), r) for p, r in parts]
        if node.catalog is not None:
            runtimes.append(("catalog", node.catalog))
        term = GaugeMetricFamily("unimeter_raft_term", "Current Raft term.", labels=["group"])
        leader = GaugeMetricFamily(
            "unimeter_raft_leader", "Node id of the group's leader (-1: unknown).", labels=["group"]
        )
        changes = CounterMetricFamily(
            "unimeter_raft_leader_changes",
            "Changes of the group's leader seen by this replica (including to unknown).",
            labels=["group"],
        )
        commit = GaugeMetricFamily(
            "unimeter_raft_commit_index", "Highest log index known committed.", labels=["group"]
        )
        fsync = _histogram(
            "unimeter_fsync_duration_seconds", "Duration of each log fsync.", ["group"]
        )
        for group, replica in runtimes:
            raft = replica.core.raft
            term.add_metric([group], raft.term)
            leader.add_metric([group], -1 if raft.leader_id is None else raft.leader_id)
            changes.add_metric([group], replica.leader_changes)
            commit.add_metric([group], raft.commit_index)
            _add(fsync, [group], replica.fsync_seconds)
        yield from (term, leader, changes, commit, fsync)

    def _storage(self) -> Iterator[Metric]:
        node = self.node
        checkpoints = node.checkpoints
        snapshots = _histogram(
            "unimeter_snapshot_duration_seconds",
            "Time each periodic partition snapshot took to write.",
            [],
        )
        _add(snapshots, [], checkpoints.seconds)
        yield snapshots
        yield CounterMetricFamily(
            "unimeter_snapshot_failures", "Periodic snapshots that failed.", checkpoints.failed
        )
        recovery = GaugeMetricFamily(
            "unimeter_recovery_duration_seconds",
            "How long each actor's recovery from disk took at the last start ('node': all).",
            labels=["actor"],
        )
        for actor, seconds in sorted(node.stats.recovery_seconds.items()):
            recovery.add_metric([actor], seconds)
        yield recovery

    def _webhooks(self) -> Iterator[Metric]:
        sender = self.node.webhooks
        if sender is None:
            return
        yield CounterMetricFamily(
            "unimeter_webhook_deliveries", "Alert webhook POSTs a receiver answered 2xx.",
            sender.delivered,
        )  # fmt: skip
        yield CounterMetricFamily(
            "unimeter_webhook_failures",
            "Alert webhook POSTs that failed (refused, timed out, not 2xx, or unsigned) and "
            "will be retried.",
            sender.failed,
        )
        yield GaugeMetricFamily(
            "unimeter_webhook_pending",
            "Alerts this node (as leader) has taken for delivery and not delivered yet.",
            sender.pending(),
        )
        mark = GaugeMetricFamily(
            "unimeter_webhook_mark",
            "Per partition replica: alerts below this cursor are delivered (logged progress).",
            labels=["partition"],
        )
        cursor = GaugeMetricFamily(
            "unimeter_alert_next_cursor",
            "Per partition replica: the cursor the next alert will get (the backlog of "
            "webhooks is this minus unimeter_webhook_mark, for thresholds that name one).",
            labels=["partition"],
        )
        for p, runtime in sorted(self.node.partitions.items()):
            state = runtime.core.state
            mark.add_metric([str(p)], state.webhook_next)
            cursor.add_metric([str(p)], state.alerts.next_cursor)
        yield mark
        yield cursor

    def _auth(self) -> Iterator[Metric]:
        node = self.node
        refused = CounterMetricFamily(
            "unimeter_auth_refusals",
            "Requests and greetings refused for a missing, unknown or revoked token, a role "
            "that does not allow the request, or a peer without the cluster secret.",
            labels=["protocol", "reason"],
        )
        for (protocol, reason), count in sorted(node.gate.refusals.items()):
            refused.add_metric([protocol, reason], count)
        yield refused
        yield CounterMetricFamily(
            "unimeter_auth_token_reloads",
            "Times the token file was read again (SIGHUP) and put in force.",
            node.gate.generation,
        )
        yield GaugeMetricFamily(
            "unimeter_auth_tokens",
            "Tokens in force (0 and unimeter_auth_required 0: the node requires none).",
            len(node.gate.tokens) if node.gate.tokens is not None else 0,
        )
        yield GaugeMetricFamily(
            "unimeter_auth_required", "1 when every request needs an API token.",
            int(node.gate.tokens_required),
        )  # fmt: skip


def registry_for(node: Node, streams: AlertStreams | None) -> CollectorRegistry:
    """A registry of this node's figures and the process's (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, streams))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
