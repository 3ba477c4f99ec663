"""The node's two kinds of replica runtime: partitions and the catalog."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from unimeter import errors
from unimeter.actors.alert_feed import AlertHub
from unimeter.actors.catalog import CatalogCore, CatalogEffects, Publication
from unimeter.actors.effects import Effects
from unimeter.actors.partition import CatalogUpdate, PartitionCore, group_ingests
from unimeter.actors.runtime import FutureReply, ReplicaRuntime, deliver
from unimeter.consensus.messages import Snapshot
from unimeter.storage.snapshot import snapshot_indexes

if TYPE_CHECKING:
    from unimeter.node import Node

log = logging.getLogger("unimeter.runtime")


class PartitionRuntime(ReplicaRuntime):
    core: PartitionCore

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Periodic snapshots (unimeter/checkpoints.py): told of every append; a snapshot is
        # published under the lock, and only if no leader's snapshot was installed meanwhile.
        self.on_appended: Callable[[PartitionRuntime, int, int], None] | None = None
        self.snapshot_lock = threading.Lock()
        self.install_epoch = 0
        self.alert_hub = AlertHub(self.core.partition)  # live alert subscriptions (leader)
        # Webhook deliveries (unimeter/webhooks): woken when alerts are applied or leadership
        # changes.
        self.on_alerts: Callable[[], None] | None = None
        self._leading = False

    def _step_all(self, batch: list[Any]) -> None:
        # Ingests drained together become one log entry (one proposal, one WAL record).
        super()._step_all(group_ingests(batch))

    def _after(self, fx: Effects) -> None:
        if fx.appends and self.on_appended is not None:
            self.on_appended(self, len(fx.appends), sum(len(a[2]) for a in fx.appends))
        if self.alert_hub.subs:
            self.alert_hub.after_step(fx.alerts, self.core)
        if self.on_alerts is not None:
            leading = self.core.leader_ready
            if fx.alerts or leading != self._leading:
                self._leading = leading
                self.on_alerts()

    def _install(self, snapshot: Snapshot) -> None:
        # Bumped on the loop at once: a periodic snapshot not yet published is now stale.
        self.install_epoch += 1
        super()._install(snapshot)

    def _install_files(self, index: int, term: int, data: bytes) -> None:
        with self.snapshot_lock:  # never interleaved with publishing a periodic snapshot
            super()._install_files(index, term, data)

    async def settle(self, timeout_s: float = 2.0) -> None:
        """Sync, then wait until the core has taken in every fsync (shutdown)."""
        await self.flush()
        deadline = time.monotonic() + timeout_s
        while len(self.mailbox) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def checkpoint(self) -> None:
        """Snapshot the applied state and drop the log before it."""
        core = self.core
        index = core.state.applied_index
        term = core.raft.term_at(index)
        if index == 0 or term is None or index <= core.raft.snapshot_index:
            return
        started = time.monotonic()
        with self.snapshot_lock:
            self._write_snapshot(index, term, core.state.snapshot())
        core.raft.compact(index)
        older = [i for i in snapshot_indexes(self.directory) if i < index]
        if older:  # the older snapshot is the fallback: the WAL must reach back to it
            self.compact_now(max(older) + 1)  # at shutdown, after the storage jobs ran
        log.info(
            "event=snapshot actor=%s index=%d elapsed_s=%.3f",
            self.name,
            index,
            time.monotonic() - started,
        )


class CatalogRuntime(ReplicaRuntime):
    core: CatalogCore
    node: Node

    def attach(self, node: Node) -> None:
        self.node = node
        self._publishing: set[asyncio.Task[None]] = set()

    def _after(self, fx: Effects) -> None:
        assert isinstance(fx, CatalogEffects)
        for pub in fx.publications:
            task = self.node.supervisor.watch(asyncio.create_task(self._publish(pub)))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def _publish(self, pub: Publication) -> None:
        """This node's partitions take in the new catalog before the requester hears back."""
        waiters = []
        for runtime in self.node.partitions.values():
            token = FutureReply()
            await runtime.mailbox.send(CatalogUpdate(pub.version, pub.metrics, token))
            waiters.append(token.future)
        results = await asyncio.gather(*waiters)
        bad = [r for r in results if r[0] != errors.Status.OK]
        if bad:  # a partition that lost leadership meanwhile; it learns the catalog later
            log.info("event=publish_partial version=%d results=%r", pub.version, bad)
        deliver(pub.replies)
