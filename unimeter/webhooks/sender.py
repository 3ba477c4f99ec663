"""The runtime of alert webhooks: one task per partition replica, delivering while this node
leads the partition (``plan.py`` decides what and when; this file only does the I/O).

A partition's task wakes when the partition applied alerts or its leadership changed (the
runtime pokes it), when a retry falls due, and once a second regardless. On the leader it
keeps a ``DeliveryPlan`` for the current term, starting from the partition's applied
``webhook_next``; it POSTs what falls due (aiohttp, one session per node, each attempt bounded
by ``webhook_attempt_timeout_s``), and reports the plan's watermark to the partition core as
``WebhookProgress`` at most every ``webhook_progress_interval_s``: the core logs it, so it
survives restarts and leader changes. Losing leadership drops the plan and cancels its POSTs;
the next leader resends from the last logged mark (duplicates keep their idempotency key).

Without ``--webhook-secret-file`` nothing is sent (a delivery must be signed): alerts wait,
counted as failures, and the log says why once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from unimeter import limits
from unimeter.actors.mailbox import MailboxClosed
from unimeter.actors.partition import WebhookProgress
from unimeter.state.partition_state import PartitionState
from unimeter.webhooks.plan import Delivery, DeliveryPlan
from unimeter.webhooks.signing import (
    ATTEMPT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    body_of,
    idempotency_key,
    signature,
)
from unimeter.wire.messages import StoredAlert

if TYPE_CHECKING:
    from unimeter.node_runtimes import PartitionRuntime

log = logging.getLogger("unimeter.webhooks")

_IDLE_WAKE_S = 1.0  # a task looks at its partition at least this often
_UNSIGNED_LOG_S = 60.0


def webhook_of(state: PartitionState, alert: StoredAlert) -> str | None:
    """The URL the alert's threshold names in the partition's current schema (None: none)."""
    inst = state.live.get(alert.metric_code)
    if inst is None:
        return None
    for threshold in inst.metric.schema.thresholds:
        if threshold.code == alert.threshold_code:
            return threshold.webhook
    return None


class WebhookSender:
    """The node's deliveries: counters for ``/metrics`` and the shared HTTP session."""

    def __init__(self, cluster_id: str, secret: bytes | None) -> None:
        self.cluster_id = cluster_id
        self.secret = secret
        self.delivered = 0  # POSTs a receiver answered 2xx
        self.failed = 0  # POSTs that failed (refused, timed out, not 2xx, or not signable)
        self.partitions: dict[int, PartitionDeliveries] = {}
        self._session: Any = None  # aiohttp.ClientSession, made on the first delivery
        self._unsigned_logged = -_UNSIGNED_LOG_S

    def attach(self, runtime: PartitionRuntime) -> PartitionDeliveries:
        deliveries = PartitionDeliveries(self, runtime)
        self.partitions[runtime.core.partition] = deliveries
        runtime.on_alerts = deliveries.poke
        return deliveries

    def pending(self) -> int:
        return sum(d.pending() for d in self.partitions.values())

    async def session(self) -> Any:
        if self._session is None:
            import aiohttp  # only a node that delivers pays for the import

            timeout = aiohttp.ClientTimeout(total=limits.webhook_attempt_timeout_s)
            self._session = aiohttp.ClientSession(
                timeout=timeout, headers={"User-Agent": "unimeter-webhooks"}
            )
        return self._session

    async def close(self) -> None:
        for deliveries in self.partitions.values():
            deliveries.abandon()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def unsigned(self, partition: int) -> None:
        now = time.monotonic()
        if now - self._unsigned_logged >= _UNSIGNED_LOG_S:
            self._unsigned_logged = now
            log.error(
                "event=webhook_not_sent partition=%d reason=no_webhook_secret "
                "hint=--webhook-secret-file action=alerts_wait", partition,
            )  # fmt: skip


class PartitionDeliveries:
    """One partition's deliveries: a plan while this node leads it, none otherwise."""

    def __init__(self, sender: WebhookSender, runtime: PartitionRuntime) -> None:
        self.sender = sender
        self.runtime = runtime
        self.partition = runtime.core.partition
        self.plan: DeliveryPlan | None = None
        self.term = -1
        self.reported = 0  # the last watermark reported to the core
        self.reported_at = -1.0
        self._posts: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._rng = random.Random()

    def poke(self) -> None:
        self._wake.set()

    def pending(self) -> int:
        return 0 if self.plan is None else self.plan.pending()

    def abandon(self) -> None:
        """Drop the plan (leadership lost, or the node stops); its POSTs are cancelled."""
        self.plan = None
        for task in self._posts:
            task.cancel()
        self._posts.clear()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = self.step(loop.time())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    def step(self, now: float) -> float:
        """Start what is due and report progress; the seconds until the next look."""
        core = self.runtime.core
        if not core.leader_ready:
            if self.plan is not None:
                self.abandon()
            return _IDLE_WAKE_S
        state = core.state
        if self.plan is None or core.raft.term != self.term:
            self.abandon()
            self.term = core.raft.term
            self.plan = DeliveryPlan(
                state.webhook_next, in_flight_max=limits.webhook_in_flight_max,
                backoff_s_initial=limits.webhook_backoff_s_initial,
                backoff_s_max=limits.webhook_backoff_s_max, rng=self._rng,
            )  # fmt: skip
            self.reported = state.webhook_next
        plan = self.plan
        if plan.room() > 0 and state.alerts.next_cursor > plan.next_offer:
            alerts, _ = state.alerts.page_all(plan.next_offer - 1, plan.room(), 0)
            plan.offer(((a, webhook_of(state, a)) for a in alerts), now)
        for delivery in plan.due(now):
            task = asyncio.create_task(self._post(plan, delivery))
            self._posts.add(task)
            task.add_done_callback(self._posts.discard)
        wait = _IDLE_WAKE_S
        mark = plan.watermark()
        if mark > max(self.reported, state.webhook_next):
            since = now - self.reported_at
            if since >= limits.webhook_progress_interval_s:
                self._report(mark, now)
            else:
                wait = min(wait, limits.webhook_progress_interval_s - since)
        deadline = plan.next_deadline()
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - now))
        return wait

    def _report(self, mark: int, now: float) -> None:
        try:
            self.runtime.mailbox.post_internal(WebhookProgress(mark))
        except MailboxClosed:
            return
        self.reported, self.reported_at = mark, now

    async def _post(self, plan: DeliveryPlan, delivery: Delivery) -> None:
        sender = self.sender
        ok, reason = await self._attempt(delivery)
        if ok:
            sender.delivered += 1
        else:
            sender.failed += 1
            if delivery.attempt & (delivery.attempt - 1) == 0:  # attempts 1, 2, 4, 8, ...
                key = idempotency_key(sender.cluster_id, self.partition, delivery.cursor)
                log.warning(
                    "event=webhook_failed key=%s url=%s attempt=%d reason=%r action=retrying",
                    key, delivery.url, delivery.attempt, reason,
                )  # fmt: skip
        if plan is self.plan:
            plan.finished(delivery.cursor, ok, asyncio.get_running_loop().time())
        self._wake.set()

    async def _attempt(self, delivery: Delivery) -> tuple[bool, str]:
        sender = self.sender
        if sender.secret is None:
            sender.unsigned(self.partition)
            return False, "no webhook secret (--webhook-secret-file)"
        import aiohttp

        body = body_of(sender.cluster_id, self.partition, delivery.alert)
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: idempotency_key(sender.cluster_id, self.partition, delivery.cursor),
            SIGNATURE_HEADER: signature(sender.secret, body),
            ATTEMPT_HEADER: str(delivery.attempt),
        }
        try:
            session = await sender.session()
            async with session.post(delivery.url, data=body, headers=headers) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return True, ""
                return False, f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
