"""The catalog core's rule table, step by step (pure: no I/O, no clock).

A one-member Raft group: ``settle`` plays the runtime, reporting every requested fsync as done.
"""

from __future__ import annotations

import random

from unimeter import errors
from unimeter.actors.catalog import (
    CatalogCore,
    CatalogEffects,
    CatalogRequest,
    CatalogState,
    decode_catalog_entry,
    encode_catalog_entry,
)
from unimeter.actors.replicated import Persisted, RaftTick, Recovered
from unimeter.consensus.config import RaftConfig
from unimeter.consensus.messages import HardState, LogEntry
from unimeter.model import AggType, AlertThreshold, DimensionFilter, MetricSchema, PeriodType
from unimeter.wire import messages as m

API = MetricSchema(code="api_calls", agg_type=AggType.COUNT)
NOW = 1_000_000_000


def make_core(entries: tuple[LogEntry, ...] = (), commit: int = 0) -> CatalogCore:
    core = CatalogCore(
        state=CatalogState(),
        node_id=1,
        members=(1,),
        addresses={1: "127.0.0.1:1"},
        recovered=Recovered(
            hard_state=HardState(term=1, commit=commit), entries=entries, snapshot=None
        ),
        raft_config=RaftConfig(),
        rng=random.Random(1),
        now_us=NOW,
    )
    settle(core, core.step(RaftTick(), NOW))
    assert core.leader_ready
    return core


def settle(core: CatalogCore, fx: CatalogEffects) -> CatalogEffects:
    """Persist until nothing waits for an fsync; returns every effect produced."""
    out = CatalogEffects()
    out.replies += fx.replies
    out.publications += fx.publications
    out.appends += fx.appends
    while fx.sync_number is not None:
        fx = core.step(Persisted(fx.sync_number), NOW)
        out.replies += fx.replies
        out.publications += fx.publications
        out.appends += fx.appends
    return out


def request(core: CatalogCore, msg: object, token: str = "t") -> CatalogEffects:
    return core.step(CatalogRequest(token, msg), NOW)  # type: ignore[arg-type]


def durable(core: CatalogCore, fx: CatalogEffects | None = None) -> CatalogEffects:
    return settle(core, fx or CatalogEffects())


def test_create_is_answered_only_after_it_is_committed_and_published() -> None:
    core = make_core()
    fx = request(core, m.MetricCreate(schema=API))
    assert fx.replies == [] and fx.sync_number is not None and len(fx.appends) == 1
    fx = durable(core, fx)
    [pub] = fx.publications
    assert pub.version == 1 and [lm.schema.code for lm in pub.metrics] == ["api_calls"]
    [reply] = pub.replies
    assert reply.status == errors.Status.OK and reply.token == "t"
    assert isinstance(reply.message, m.SchemaReply) and reply.message.catalog_version == 1


def test_identical_create_is_idempotent_and_different_one_conflicts() -> None:
    core = make_core()
    first = request(core, m.MetricCreate(schema=API))
    # A retry while the first is still in flight waits for the same answer, adds no entry.
    fx = request(core, m.MetricCreate(schema=API), token="retry")
    assert fx.appends == [] and fx.replies == []
    fx = durable(core, first)
    assert [r.token for r in fx.publications[0].replies] == ["t", "retry"]
    fx = request(core, m.MetricCreate(schema=API), token="later")
    assert fx.appends == [] and fx.replies[0].status == errors.Status.OK
    other = MetricSchema(code="api_calls", agg_type=AggType.SUM)
    fx = request(core, m.MetricCreate(schema=other))
    assert fx.replies[0].status == errors.Status.ALREADY_EXISTS


def test_update_keeps_generation_and_refuses_fixed_fields() -> None:
    core = make_core()
    durable(core, request(core, m.MetricCreate(schema=API)))
    new = MetricSchema(
        code="api_calls",
        agg_type=AggType.COUNT,
        thresholds=[AlertThreshold(code="t1", value=5)],
        filters=[DimensionFilter(key="plan", values=["pro"])],
    )
    fx = durable(core, request(core, m.MetricUpdate(schema=new)))
    [lm] = fx.publications[0].metrics
    assert lm.generation == 1 and lm.schema == new.normalized()
    bad = MetricSchema(code="api_calls", agg_type=AggType.COUNT, period_type=PeriodType.DAY)
    fx = request(core, m.MetricUpdate(schema=bad))
    assert fx.replies[0].status == errors.Status.INVALID_REQUEST
    assert "period_type" in fx.replies[0].message.message  # type: ignore[union-attr]
    fx = request(core, m.MetricUpdate(schema=MetricSchema(code="nope", agg_type=AggType.SUM)))
    assert fx.replies[0].status == errors.Status.NOT_FOUND


def test_delete_then_create_is_a_new_generation() -> None:
    core = make_core()
    durable(core, request(core, m.MetricCreate(schema=API)))
    fx = durable(core, request(core, m.MetricDelete(code="api_calls")))
    assert fx.publications[0].metrics == ()
    assert isinstance(fx.publications[0].replies[0].message, m.Deleted)
    fx = request(core, m.MetricDelete(code="api_calls"))
    assert fx.replies[0].status == errors.Status.NOT_FOUND
    summed = MetricSchema(code="api_calls", agg_type=AggType.SUM)
    fx = durable(core, request(core, m.MetricCreate(schema=summed)))
    [lm] = fx.publications[0].metrics
    assert lm.generation == 3 and lm.schema.agg_type == AggType.SUM


def test_get_and_list_serve_only_committed_state() -> None:
    core = make_core()
    pending = request(core, m.MetricCreate(schema=API))
    fx = request(core, m.MetricGet(code="api_calls"))
    assert fx.replies[0].status == errors.Status.NOT_FOUND
    durable(core, pending)
    fx = request(core, m.MetricList())
    assert [s.code for s in fx.replies[0].message.schemas] == ["api_calls"]  # type: ignore[union-attr]


def test_recovery_replays_the_log_to_the_same_catalog() -> None:
    core = make_core()
    appended = []
    for msg in (
        m.MetricCreate(schema=API),
        m.MetricDelete(code="api_calls"),
        m.MetricCreate(schema=MetricSchema(code="b", agg_type=AggType.MAX)),
    ):
        appended += durable(core, request(core, msg)).appends
    # The log on disk: the first leader's no-op, then the three changes.
    noop = LogEntry(term=2, index=1, data=b"")
    entries = (noop, *(LogEntry(term=t, index=i, data=d) for i, t, d in appended))
    # A restarted replica re-elects itself and re-applies the whole log before it serves.
    again = make_core(entries=entries, commit=0)
    assert again.published() == core.published()
    assert again.version == 3
    assert [decode_catalog_entry(d).code for _, _, d in appended if d] == [
        "api_calls",
        "api_calls",
        "b",
    ]
    assert encode_catalog_entry(decode_catalog_entry(appended[0][2])) == appended[0][2]


def test_a_retried_create_joins_the_latest_pending_create_not_a_pending_delete() -> None:
    # Seed 777912 of the simulator: delete and re-create in flight together, then the client
    # retries its create; the retry must get the re-create's answer, never the delete's.
    core = make_core()
    durable(core, request(core, m.MetricCreate(schema=API)))
    delete = request(core, m.MetricDelete(code="api_calls"), token="delete")
    create = request(core, m.MetricCreate(schema=API), token="create")
    assert len(delete.appends) == 1 and len(create.appends) == 1
    fx = request(core, m.MetricCreate(schema=API), token="retry")
    assert fx.appends == [] and fx.replies == []
    fx = durable(core, create)
    answers = {r.token: r.message for pub in fx.publications for r in pub.replies}
    assert isinstance(answers["delete"], m.Deleted)
    assert isinstance(answers["create"], m.SchemaReply)
    assert answers["retry"] == answers["create"]


def test_a_retried_delete_in_flight_joins_the_pending_delete() -> None:
    core = make_core()
    durable(core, request(core, m.MetricCreate(schema=API)))
    first = request(core, m.MetricDelete(code="api_calls"), token="first")
    fx = request(core, m.MetricDelete(code="api_calls"), token="retry")
    assert fx.appends == [] and fx.replies == []
    fx = durable(core, first)
    [pub] = fx.publications
    assert [(r.token, type(r.message)) for r in pub.replies] == [
        ("first", m.Deleted),
        ("retry", m.Deleted),
    ]
    # Once applied, the code is absent: another delete is refused.
    fx = request(core, m.MetricDelete(code="api_calls"))
    assert fx.replies[0].status == errors.Status.NOT_FOUND
