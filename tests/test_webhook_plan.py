"""The pure parts of alert webhooks: the delivery plan (a state machine checked against a plain
model with Hypothesis), the log record and snapshot field that carry progress, thresholds with
a URL on every path a schema takes, and the signature a receiver checks."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.support.examples import examples
from unimeter.errors import InvalidRequestError
from unimeter.json_model import schema_from_json, schema_json
from unimeter.model import AggType, AlertThreshold, MetricSchema
from unimeter.state.entries import WebhookMark
from unimeter.state.partition_state import PartitionState
from unimeter.state.records import RecordError, decode_entry, encode_entry
from unimeter.webhooks.plan import DeliveryPlan, PlanError
from unimeter.webhooks.signing import body_of, idempotency_key, signature, verify
from unimeter.wire.messages import StoredAlert

URLS = ["http://a.example/hook", "https://b.example/x", None]


def alert(cursor: int) -> StoredAlert:
    return StoredAlert(
        account_id=cursor % 7, metric_code="m", threshold_code="t", value_at_cross=cursor,
        triggered_at_us=1_700_000_000_000_000 + cursor, cursor=cursor,
    )  # fmt: skip


def plan(start: int = 0, in_flight_max: int = 4) -> DeliveryPlan:
    return DeliveryPlan(
        start, in_flight_max=in_flight_max, backoff_s_initial=1.0, backoff_s_max=8.0,
        rng=random.Random(1),
    )  # fmt: skip


def test_a_failed_delivery_waits_its_backoff_and_holds_the_watermark() -> None:
    p = plan()
    p.offer([(alert(0), None), (alert(1), URLS[0]), (alert(2), URLS[1])], now=0.0)
    assert p.watermark() == 1  # alert 0 needs nothing
    first = p.due(0.0)
    assert [(d.cursor, d.attempt) for d in first] == [(1, 1), (2, 1)]
    assert p.due(0.0) == []  # in flight: not started twice
    p.finished(2, ok=True, now=0.1)
    assert p.watermark() == 1  # 2 is delivered, 1 is not: progress stops at 1
    p.finished(1, ok=False, now=0.1)
    deadline = p.next_deadline()
    assert deadline is not None and 0.1 + 0.5 <= deadline <= 0.1 + 1.0
    assert p.due(deadline - 0.01) == []
    (again,) = p.due(deadline)
    assert (again.cursor, again.attempt) == (1, 2)
    p.finished(1, ok=False, now=deadline)
    later = p.next_deadline()
    assert later is not None and later >= deadline + 1.0  # the backoff doubled
    assert p.watermark() == 1
    (third,) = p.due(100.0)
    p.finished(third.cursor, ok=True, now=100.0)
    assert p.watermark() == 3 and p.delivered == 2 and p.failures == 2


def test_the_plan_takes_at_most_its_window_and_skips_gone_cursors() -> None:
    p = plan(start=5, in_flight_max=2)
    offered = [(alert(c), URLS[0]) for c in (3, 5, 9, 10)]
    p.offer(offered, now=0.0)
    assert p.room() == 0 and p.next_offer == 10  # 3 is below the start; 10 waits for room
    assert p.watermark() == 5
    for d in p.due(0.0):
        p.finished(d.cursor, ok=True, now=0.0)
    assert p.watermark() == 10 and p.room() == 2


def test_an_answer_for_an_alert_not_in_flight_is_a_bug() -> None:
    p = plan()
    p.offer([(alert(0), URLS[0])], now=0.0)
    with pytest.raises(PlanError, match="ok while pending"):
        p.finished(0, ok=True, now=0.0)


class PlanMachine(RuleBasedStateMachine):
    """The plan driven as the runtime drives it (offer what is committed from ``next_offer``
    on, start what is due, answer POSTs in any order), against a model: which committed
    alerts need a delivery, and which a receiver took."""

    def __init__(self) -> None:
        super().__init__()
        self.plan = plan(start=0, in_flight_max=5)
        self.now = 0.0
        self.next_cursor = 0
        self.committed: list[tuple[StoredAlert, str | None]] = []
        self.delivered: set[int] = set()
        self.in_flight: dict[int, int] = {}  # cursor -> attempt
        self.last_watermark = 0

    @rule(urls=st.lists(st.sampled_from(URLS), min_size=1, max_size=4), gap=st.integers(0, 2))
    def commit_alerts(self, urls: list[str | None], gap: int) -> None:
        self.next_cursor += gap  # cursors of alerts gone (retention) before they were offered
        for url in urls:
            self.committed.append((alert(self.next_cursor), url))
            self.next_cursor += 1

    @rule()
    def refill(self) -> None:
        fresh = [(a, u) for a, u in self.committed if a.cursor >= self.plan.next_offer]
        self.plan.offer(fresh[: max(self.plan.room(), 0)], self.now)

    @rule(seconds=st.floats(0, 20))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def start_due(self) -> None:
        urls = {a.cursor: u for a, u in self.committed}
        for d in self.plan.due(self.now):
            assert d.cursor not in self.in_flight, "started twice"
            assert urls[d.cursor] == d.url and d.cursor not in self.delivered
            self.in_flight[d.cursor] = d.attempt

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data(), ok=st.booleans())
    def answer(self, data: st.DataObject, ok: bool) -> None:
        cursor = data.draw(st.sampled_from(sorted(self.in_flight)))
        del self.in_flight[cursor]
        self.plan.finished(cursor, ok, self.now)
        if ok:
            self.delivered.add(cursor)

    @invariant()
    def progress_never_passes_an_undelivered_alert(self) -> None:
        mark = self.plan.watermark()
        assert mark >= self.last_watermark
        self.last_watermark = mark
        for a, url in self.committed:
            if a.cursor < mark and url is not None:
                assert a.cursor in self.delivered, (a.cursor, mark)

    @invariant()
    def what_waits_has_a_deadline(self) -> None:
        waiting = self.plan.pending() - len(self.in_flight)
        assert (self.plan.next_deadline() is None) == (waiting == 0)


TestPlanMachine = PlanMachine.TestCase
TestPlanMachine.settings = settings(
    max_examples=examples(75), stateful_step_count=40, deadline=None
)


# --------------------------------------------------------------------------- records and state


def test_the_mark_round_trips_and_only_moves_forward() -> None:
    for cursor in (0, 1, 2**40):
        assert decode_entry(encode_entry(WebhookMark(next_cursor=cursor))) == WebhookMark(
            next_cursor=cursor
        )
    with pytest.raises(RecordError, match="WebhookMark"):
        decode_entry(encode_entry(WebhookMark(next_cursor=1))[:-1] + b"\x81\x01")
    state = PartitionState(0)
    state.apply(1, WebhookMark(next_cursor=7))
    state.apply(2, WebhookMark(next_cursor=3))  # a stale mark changes nothing
    assert state.webhook_next == 7 and state.applied_index == 2
    assert PartitionState.from_snapshot(state.snapshot()).webhook_next == 7


# --------------------------------------------------------------------------- schemas


def test_a_threshold_carries_its_webhook_on_every_path() -> None:
    schema = MetricSchema(
        code="calls", agg_type=AggType.SUM,
        thresholds=(AlertThreshold("t1", 10, webhook="https://hooks.example/a?x=1"),
                    AlertThreshold("t2", 20)),
    ).normalized()  # fmt: skip
    assert schema.thresholds[0].webhook == "https://hooks.example/a?x=1"
    assert schema.thresholds[1].webhook is None
    assert MetricSchema.from_wire(schema.to_wire()) == schema
    assert len(schema.to_wire()["thresholds"][1]) == 3  # type: ignore[index]  # old layout kept
    assert schema_from_json(schema_json(schema)) == schema
    assert "webhook" not in schema_json(schema)["thresholds"][1]


@pytest.mark.parametrize(
    "url",
    ["ftp://x.example/", "http://", "hooks.example/path", "https://user:pw@x.example/",
     "https://x.example/a b", "https://x.example/" + "a" * 2048, ""],
)  # fmt: skip
def test_bad_webhook_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="webhook"):
        MetricSchema("m", AggType.SUM, thresholds=(AlertThreshold("t", 1, webhook=url),)).validate()
    with pytest.raises(InvalidRequestError, match="webhook"):
        schema_from_json({"code": "m", "agg_type": "sum",
                          "thresholds": [{"code": "t", "value": 1, "webhook": url}]})  # fmt: skip


# --------------------------------------------------------------------------- signing


def test_the_signature_covers_the_exact_body() -> None:
    secret = b"k" * 32
    body = body_of("cluster", 3, alert(17))
    assert idempotency_key("cluster", 3, 17).encode() in body
    header = signature(secret, body)
    assert header.startswith("sha256=") and verify(secret, body, header)
    assert not verify(secret, body + b" ", header)
    assert not verify(b"j" * 32, body, header)
    assert not verify(secret, body, None) and not verify(secret, body, header[7:])
    assert body_of("cluster", 3, alert(17)) == body  # the same bytes on every attempt
