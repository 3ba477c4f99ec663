"""The catalog core's rule table, step by step (pure: no I/O, no clock)."""

from __future__ import annotations

from unimeter import errors
from unimeter.actors.catalog import (
    CatalogCore,
    CatalogDurable,
    CatalogRequest,
    decode_catalog_entry,
    encode_catalog_entry,
)
from unimeter.model import AggType, AlertThreshold, DimensionFilter, MetricSchema, PeriodType
from unimeter.wire import messages as m

API = MetricSchema(code="api_calls", agg_type=AggType.COUNT)


def request(core: CatalogCore, msg: object, token: str = "t"):  # type: ignore[no-untyped-def]
    return core.step(CatalogRequest(token, msg), 0)  # type: ignore[arg-type]


def durable(core: CatalogCore):  # type: ignore[no-untyped-def]
    return core.step(CatalogDurable(core.last_index), 0)


def test_create_is_answered_only_after_it_is_durable_and_published() -> None:
    core = CatalogCore()
    fx = request(core, m.MetricCreate(schema=API))
    assert fx.replies == [] and fx.sync and len(fx.appends) == 1
    fx = durable(core)
    [pub] = fx.publications
    assert pub.version == 1 and [lm.schema.code for lm in pub.metrics] == ["api_calls"]
    [reply] = pub.replies
    assert reply.status == errors.Status.OK and reply.token == "t"
    assert isinstance(reply.message, m.SchemaReply) and reply.message.catalog_version == 1


def test_identical_create_is_idempotent_and_different_one_conflicts() -> None:
    core = CatalogCore()
    request(core, m.MetricCreate(schema=API))
    # A retry while the first is still in flight waits for the same answer, adds no entry.
    fx = request(core, m.MetricCreate(schema=API), token="retry")
    assert fx.appends == [] and fx.replies == []
    fx = durable(core)
    assert [r.token for r in fx.publications[0].replies] == ["t", "retry"]
    fx = request(core, m.MetricCreate(schema=API), token="later")
    assert fx.appends == [] and fx.replies[0].status == errors.Status.OK
    other = MetricSchema(code="api_calls", agg_type=AggType.SUM)
    fx = request(core, m.MetricCreate(schema=other))
    assert fx.replies[0].status == errors.Status.ALREADY_EXISTS


def test_update_keeps_generation_and_refuses_fixed_fields() -> None:
    core = CatalogCore()
    request(core, m.MetricCreate(schema=API))
    durable(core)
    new = MetricSchema(
        code="api_calls",
        agg_type=AggType.COUNT,
        thresholds=[AlertThreshold(code="t1", value=5)],
        filters=[DimensionFilter(key="plan", values=["pro"])],
    )
    request(core, m.MetricUpdate(schema=new))
    fx = durable(core)
    [lm] = fx.publications[0].metrics
    assert lm.generation == 1 and lm.schema == new.normalized()
    bad = MetricSchema(code="api_calls", agg_type=AggType.COUNT, period_type=PeriodType.DAY)
    fx = request(core, m.MetricUpdate(schema=bad))
    assert fx.replies[0].status == errors.Status.INVALID_REQUEST
    assert "period_type" in fx.replies[0].message.message  # type: ignore[union-attr]
    fx = request(core, m.MetricUpdate(schema=MetricSchema(code="nope", agg_type=AggType.SUM)))
    assert fx.replies[0].status == errors.Status.NOT_FOUND


def test_delete_then_create_is_a_new_generation() -> None:
    core = CatalogCore()
    request(core, m.MetricCreate(schema=API))
    durable(core)
    request(core, m.MetricDelete(code="api_calls"))
    fx = durable(core)
    assert fx.publications[0].metrics == ()
    assert isinstance(fx.publications[0].replies[0].message, m.Deleted)
    fx = request(core, m.MetricDelete(code="api_calls"))
    assert fx.replies[0].status == errors.Status.NOT_FOUND
    request(core, m.MetricCreate(schema=MetricSchema(code="api_calls", agg_type=AggType.SUM)))
    fx = durable(core)
    [lm] = fx.publications[0].metrics
    assert lm.generation == 3 and lm.schema.agg_type == AggType.SUM


def test_get_and_list_serve_only_durable_state() -> None:
    core = CatalogCore()
    request(core, m.MetricCreate(schema=API))
    fx = request(core, m.MetricGet(code="api_calls"))
    assert fx.replies[0].status == errors.Status.NOT_FOUND
    durable(core)
    fx = request(core, m.MetricList())
    assert [s.code for s in fx.replies[0].message.schemas] == ["api_calls"]  # type: ignore[union-attr]


def test_recovery_replays_entries_to_the_same_catalog() -> None:
    core = CatalogCore()
    appended = []
    for msg in (
        m.MetricCreate(schema=API),
        m.MetricDelete(code="api_calls"),
        m.MetricCreate(schema=MetricSchema(code="b", agg_type=AggType.MAX)),
    ):
        appended += request(core, msg).appends
        durable(core)
    blobs = [encode_catalog_entry(e) for _, e in appended]  # type: ignore[arg-type]
    again = CatalogCore([decode_catalog_entry(b) for b in blobs])
    assert again.published() == core.published()
    assert again.version == 3


def test_truncate_uncommitted_fails_waiters_and_frees_the_code() -> None:
    core = CatalogCore()
    request(core, m.MetricCreate(schema=API), token="a")
    assert core.truncate_uncommitted(0) == ["a"]
    fx = request(core, m.MetricCreate(schema=MetricSchema(code="api_calls", agg_type=AggType.SUM)))
    assert fx.appends and fx.appends[0][1].version == 1  # type: ignore[union-attr]
