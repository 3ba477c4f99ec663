"""The node's two log-owning runtimes: partitions and the catalog."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from unimeter import errors, limits
from unimeter.actors.catalog import (
    CatalogCore,
    CatalogDurable,
    CatalogEffects,
    Publication,
    encode_catalog_entry,
)
from unimeter.actors.effects import Effects
from unimeter.actors.mailbox import Mailbox
from unimeter.actors.partition import CatalogUpdate, Durable, PartitionCore
from unimeter.actors.runtime import FutureReply, LogRuntime, deliver
from unimeter.storage.snapshot import write_snapshot
from unimeter.storage.wal import WriteAheadLog
from unimeter.wire.records import encode_entry

if TYPE_CHECKING:
    from unimeter.node import Node

log = logging.getLogger("unimeter.runtime")


class PartitionRuntime(LogRuntime):
    core: PartitionCore

    def __init__(self, name: str, core: PartitionCore, wal: WriteAheadLog, directory: Path) -> None:
        super().__init__(
            name, core, wal, Mailbox(limits.mailbox_partition_capacity), encode_entry, Durable
        )
        self.directory = directory

    async def flush_and_settle(self, timeout_s: float = 2.0) -> None:
        """Sync, then wait until the core has applied everything durable (shutdown)."""
        await self.flush()
        deadline = time.monotonic() + timeout_s
        while (
            self.core.state.applied_index < self.wal.durable_index or len(self.mailbox)
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def checkpoint(self) -> None:
        """Snapshot the applied state and drop the log before it (on a stopped actor)."""
        state = self.core.state
        if state.applied_index == 0:
            return
        started = time.monotonic()
        write_snapshot(self.directory, state.applied_index, state.snapshot())
        self.wal.compact_before(state.applied_index + 1)
        log.info(
            "event=snapshot actor=%s index=%d elapsed_s=%.3f",
            self.name,
            state.applied_index,
            time.monotonic() - started,
        )


class CatalogRuntime(LogRuntime):
    core: CatalogCore

    def __init__(
        self, node: Node, core: CatalogCore, wal: WriteAheadLog, mailbox: Mailbox[object]
    ) -> None:
        super().__init__("catalog", core, wal, mailbox, encode_catalog_entry, CatalogDurable)
        self.node = node
        self._publishing: set[asyncio.Task[None]] = set()

    def _new_effects(self) -> Effects:
        return CatalogEffects()

    def _after(self, fx: Effects) -> None:
        assert isinstance(fx, CatalogEffects)
        for pub in fx.publications:
            task = asyncio.create_task(self._publish(pub))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def _publish(self, pub: Publication) -> None:
        """Every partition applies the new catalog before the requester hears back."""
        waiters = []
        for runtime in self.node.partitions:
            token = FutureReply()
            await runtime.mailbox.send(CatalogUpdate(pub.version, pub.metrics, token))
            waiters.append(token.future)
        results = await asyncio.gather(*waiters)
        bad = [r for r in results if r[0] != errors.Status.OK]
        if bad:  # pragma: no cover - a partition refusing a schema is a bug
            log.error("event=publish_failed version=%d results=%r", pub.version, bad)
        deliver(pub.replies)
