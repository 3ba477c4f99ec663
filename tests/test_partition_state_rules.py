"""One test per rule of docs/semantics.md: readable examples of what a partition answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.partition_helpers import (
    ADD,
    DAY,
    FAR,
    REMOVE,
    T0,
    H,
    Partition,
    batch_entry,
    ev,
    live,
)
from unimeter import errors, periods
from unimeter.model import AggType, AlertThreshold, DimensionFilter, PeriodType
from unimeter.state.partition_state import PartitionState, Seen


def test_offsets_are_partition_high_bits_plus_a_count_of_stored_events() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT))
    first = p.ingest(ev("c"), ev("c"))
    second = p.ingest(ev("c"))
    assert (first.first_offset, first.last_offset) == (2 << 48, (2 << 48) + 1)
    assert (second.first_offset, second.last_offset) == ((2 << 48) + 2, (2 << 48) + 2)
    assert p.ingest().first_offset is None


def test_apply_takes_log_indexes_in_order() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT))
    with pytest.raises(AssertionError):
        p.state.apply(5, batch_entry(T0, []))


def test_every_non_unique_aggregate_keeps_count_sum_max_and_latest() -> None:
    for agg in (AggType.COUNT, AggType.SUM, AggType.MAX, AggType.LATEST):
        p = Partition(live("m", agg_type=agg))
        p.ingest(ev("m", 5, at=2), ev("m", 9, at=1), ev("m", -3, at=3))
        value = p.state.query("m", 1, *FAR)
        assert (value.count, value.sum, value.max, value.last_value) == (3, 11, 9, -3)
        assert value.last_timestamp == periods.from_us(T0 + 3)


def test_sums_are_exact_beyond_64_bits() -> None:
    p = Partition(live("s", agg_type=AggType.SUM))
    p.ingest(*[ev("s", 2**63 - 1) for _ in range(4)])
    assert p.state.query("s", 1, *FAR).sum == 4 * (2**63 - 1)


def test_latest_ties_on_timestamp_go_to_the_later_event_in_the_log() -> None:
    p = Partition(live("l", agg_type=AggType.LATEST))
    p.ingest(ev("l", 1, at=7), ev("l", 2, at=7))
    p.ingest(ev("l", 3, at=7), ev("l", 4, at=6))
    assert p.state.query("l", 1, *FAR).last_value == 3


def test_calendar_periods_start_on_the_billing_cycle_day() -> None:
    p = Partition(
        live("c", agg_type=AggType.COUNT, period_type=PeriodType.CALENDAR, billing_cycle_day=15)
    )
    p.ingest(ev("c", at=-DAY), ev("c", at=30 * DAY))  # Jan 26 and Feb 26 2024
    value, start, end = p.state.query_realtime("c", 1, T0)
    assert (periods.from_us(start), periods.from_us(end)) == (
        datetime(2024, 1, 15, tzinfo=UTC),
        datetime(2024, 2, 15, tzinfo=UTC),
    )
    assert value.count == 1


def test_partial_periods_are_computed_from_their_events() -> None:
    p = Partition(live("c", agg_type=AggType.SUM, period_type=PeriodType.DAY))
    p.ingest(ev("c", 1, at=H), ev("c", 10, at=2 * H), ev("c", 100, at=DAY + H))
    assert p.state.query("c", 1, T0 + H + 1, T0 + DAY + H + 1).sum == 110
    assert p.state.query("c", 1, T0, T0 + 2 * DAY).sum == 111  # two whole days
    assert p.state.query("c", 1, T0 + 2 * H, T0 + 2 * H + 1).sum == 10


def test_a_filter_on_one_key_counts_events_that_carry_more_keys() -> None:
    dims = (DimensionFilter("region", ("eu", "us")), DimensionFilter("provider", ("aws", "gcp")))
    p = Partition(live("c", agg_type=AggType.COUNT, filters=dims))
    p.ingest(
        ev("c", props={"region": "eu", "provider": "aws"}),
        ev("c", props={"region": "eu"}),
        ev("c", props={"region": "us", "provider": "aws"}),
        ev("c", props={"region": "eu", "provider": "azure"}),  # azure is not declared
    )
    assert p.state.query("c", 1, *FAR, (("region", "eu"),)).count == 3
    assert p.state.query("c", 1, *FAR, (("region", "eu"), ("provider", "aws"))).count == 1
    assert p.state.query("c", 1, *FAR).count == 4


def test_filters_and_group_by_must_name_declared_keys_and_values() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT, filters=(DimensionFilter("r", ("eu",)),)))
    for bad in ((("zone", "eu"),), (("r", "us"),)):
        with pytest.raises(errors.InvalidRequestError, match=r"zone|'us'"):
            p.state.query("c", 1, *FAR, bad)
    with pytest.raises(errors.InvalidRequestError, match="zone"):
        p.state.breakdown("c", 1, *FAR, ("zone",))
    with pytest.raises(errors.UnknownMetricError):
        p.state.query("nope", 1, *FAR)


def test_breakdown_groups_by_the_keys_events_carry() -> None:
    dims = (DimensionFilter("region", ("eu", "us")), DimensionFilter("tier", ("free", "pro")))
    p = Partition(live("s", agg_type=AggType.SUM, filters=dims))
    p.ingest(
        ev("s", 1, props={"region": "eu", "tier": "pro"}),
        ev("s", 2, props={"region": "eu"}),
        ev("s", 4, props={"tier": "free"}),
    )
    cells = dict(p.state.breakdown("s", 1, *FAR, ("region",)))
    assert {k: v.sum for k, v in cells.items()} == {(("region", "eu"),): 3, (): 4}
    cells = dict(p.state.breakdown("s", 1, *FAR, ("region", "tier"), (("region", "eu"),)))
    assert {k: v.sum for k, v in cells.items()} == {
        (("region", "eu"),): 2,
        (("region", "eu"), ("tier", "pro")): 1,
    }


def test_dimension_changes_apply_to_later_events_only() -> None:
    for agg in (AggType.COUNT, AggType.COUNT_UNIQUE):
        p = Partition(live("c", agg_type=agg))
        p.ingest(ev("c", 1, props={"region": "eu"}), ev("c", 2))
        p.schema(live("c", agg_type=agg, filters=(DimensionFilter("region", ("eu",)),)))
        p.ingest(ev("c", 3, props={"region": "eu"}))
        assert p.state.query("c", 1, *FAR).count == 3  # the aggregate stays
        assert p.state.query("c", 1, *FAR, (("region", "eu"),)).count == 1
        # Events from before the change are in the empty cell, in the same period.
        cells = dict(p.state.breakdown("c", 1, *FAR, ("region",)))
        assert {k: v.count for k, v in cells.items()} == {(): 2, (("region", "eu"),): 1}


def test_a_new_generation_is_a_new_metric_and_a_deleted_one_is_unknown() -> None:
    p = Partition(live("c", 1, agg_type=AggType.COUNT))
    p.ingest(ev("c", at=1), ev("c", at=2))
    p.schema(live("c", 2, agg_type=AggType.COUNT))
    assert p.state.query("c", 1, T0, T0 + 2).count == 0  # not even through an edge
    p.ingest(ev("c", at=1))
    assert p.state.query("c", 1, *FAR).count == 1
    p.schema()
    with pytest.raises(errors.UnknownMetricError):
        p.state.query("c", 1, *FAR)
    assert p.state.metric("c") is None
    events, _ = p.state.list_events(1, *FAR, -1, 10)
    assert [e.metric_code for e in events] == ["c", "c", "c"]  # raw events stay listable


def test_unique_counts_the_set_of_values_after_adds_and_removes() -> None:
    p = Partition(live("u", agg_type=AggType.COUNT_UNIQUE))
    p.ingest(ev("u", 7, op=ADD), ev("u", 8), ev("u", 7, op=ADD), ev("u", 8, op=REMOVE))
    value = p.state.query("u", 1, *FAR)
    assert (value.count, value.sum, value.max, value.last_value) == (1, 0, None, None)


def test_a_remove_takes_the_value_out_of_every_cell() -> None:
    dims = (DimensionFilter("r", ("eu", "us")),)
    p = Partition(live("u", agg_type=AggType.COUNT_UNIQUE, filters=dims))
    p.ingest(
        ev("u", 1, props={"r": "eu"}),
        ev("u", 1, props={"r": "us"}),
        ev("u", 1, op=REMOVE),
        ev("u", 1, props={"r": "us"}),
    )
    assert dict(p.state.breakdown("u", 1, *FAR, ("r",)))[(("r", "us"),)].count == 1
    assert p.state.query("u", 1, *FAR, (("r", "eu"),)).count == 0


def test_unique_over_several_periods_is_the_size_of_the_union() -> None:
    p = Partition(live("u", agg_type=AggType.COUNT_UNIQUE, period_type=PeriodType.DAY))
    p.ingest(ev("u", 1), ev("u", 2), ev("u", 2, at=DAY), ev("u", 3, at=DAY))
    assert p.state.query("u", 1, T0, T0 + 2 * DAY).count == 3


def test_recurring_unique_sets_carry_forward_and_late_events_flow_forward() -> None:
    p = Partition(
        live("seats", agg_type=AggType.COUNT_UNIQUE, period_type=PeriodType.DAY, recurring=True)
    )
    p.ingest(ev("seats", 1), ev("seats", 2), ev("seats", 2, at=DAY + H, op=REMOVE))

    def day(n: int) -> int:
        return p.state.query("seats", 1, T0 + n * DAY, T0 + (n + 1) * DAY).count

    assert [day(0), day(1), day(5)] == [2, 1, 1]
    p.ingest(ev("seats", 9, at=H))  # late, for day 0
    assert [day(0), day(1), day(5)] == [3, 2, 2]
    # An edge of a recurring period is the set as of the edge's end.
    assert p.state.query("seats", 1, T0 + DAY + 1, T0 + DAY + 2).count == 3  # before the remove
    assert p.state.query("seats", 1, T0 + DAY + H, T0 + DAY + H + 1).count == 2


def test_recurring_latest_carries_into_periods_without_events() -> None:
    p = Partition(live("bal", agg_type=AggType.LATEST, period_type=PeriodType.DAY, recurring=True))
    p.ingest(ev("bal", 50, at=H))
    value = p.state.query("bal", 1, T0 + 3 * DAY, T0 + 4 * DAY)
    assert (value.count, value.last_value) == (0, 50)
    assert p.state.query("bal", 1, T0 + H + 1, T0 + DAY).last_value == 50  # looks back in-period


def test_a_threshold_fires_once_per_period_when_first_reached() -> None:
    p = Partition(
        live(
            "c",
            agg_type=AggType.COUNT,
            period_type=PeriodType.DAY,
            thresholds=(AlertThreshold("t", 2),),
        )
    )
    assert p.ingest(ev("c")).alerts == ()
    fired = p.ingest(ev("c"), ev("c"), ev("c", at=DAY), ev("c", at=DAY), stamp=T0 + 5).alerts
    assert [(a.value_at_cross, a.triggered_at_us, a.cursor) for a in fired] == [
        (2, T0 + 5, 0),
        (2, T0 + 5, 1),
    ]
    assert p.state.query("c", 1, T0, T0 + DAY).alert_flags == 1


def test_a_recurring_threshold_fires_at_every_new_multiple_once_per_event() -> None:
    p = Partition(
        live("s", agg_type=AggType.SUM, thresholds=(AlertThreshold("every10", 10, recurring=True),))
    )
    fired = p.ingest(ev("s", 4), ev("s", 7), ev("s", 25), ev("s", -30), ev("s", 15)).alerts
    assert [a.value_at_cross for a in fired] == [11, 36]  # 36 jumps to 3x10: one record


def test_reordering_thresholds_keeps_fired_state_and_moves_flag_bits() -> None:
    a, b = AlertThreshold("a", 1), AlertThreshold("b", 100)
    p = Partition(live("c", agg_type=AggType.COUNT, thresholds=(a, b)))
    p.ingest(ev("c"))
    assert p.state.query("c", 1, *FAR).alert_flags == 0b01
    p.schema(live("c", agg_type=AggType.COUNT, thresholds=(b, a)))
    assert p.ingest(ev("c")).alerts == ()  # "a" does not fire again
    assert p.state.query("c", 1, *FAR).alert_flags == 0b10


def test_alerts_list_per_account_in_cursor_order_with_paging() -> None:
    p = Partition(
        live(
            "c",
            agg_type=AggType.COUNT,
            period_type=PeriodType.DAY,
            thresholds=(AlertThreshold("t", 1),),
        )
    )
    p.ingest(*[ev("c", at=n * DAY, account=1 + n % 2) for n in range(5)])
    page, cursor = p.state.list_alerts(1, -1, 2)
    assert [x.cursor for x in page] == [0, 2] and cursor == 2
    page, cursor = p.state.list_alerts(1, cursor, 2)
    assert [x.cursor for x in page] == [4] and cursor is None


def test_event_ids_are_remembered_for_the_window_of_stamp_days() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT), window=2)
    p.ingest(ev("c", event_id="x"), stamp=T0)
    assert p.state.event_id_seen("c", 1, "x")
    assert not p.state.event_id_seen("c", 2, "x") and not p.state.event_id_seen("d", 1, "x")
    p.ingest(stamp=T0 + DAY)
    assert p.state.event_id_seen("c", 1, "x")
    p.ingest(stamp=T0 + 2 * DAY)
    assert not p.state.event_id_seen("c", 1, "x")


def test_a_batch_repeating_a_stored_event_id_is_a_leader_bug() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT))
    p.ingest(ev("c", event_id="x"))
    with pytest.raises(AssertionError, match="already stored"):
        p.ingest(ev("c", event_id="x"))


def test_producer_outcomes_are_exact_while_cached_then_seen() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT))
    result = p.ingest(ev("c"), producer=(7, 3))
    reply = p.state.producer_outcome(7, 3)
    assert reply is not None and not isinstance(reply, Seen)
    assert (reply.n_stored, reply.last_offset, reply.log_index) == (1, result.last_offset, 2)
    assert p.state.producer_outcome(7, 2) is None  # out of order: 2 was never applied
    for seq in range(100, 164):
        p.ingest(producer=(7, seq))
    assert isinstance(p.state.producer_outcome(7, 3), Seen)
    assert p.state.producer_outcome(7, 163) is not None


def test_retention_drops_whole_periods_with_their_events_and_alerts() -> None:
    p = Partition(
        live(
            "c",
            agg_type=AggType.COUNT,
            period_type=PeriodType.DAY,
            thresholds=(AlertThreshold("t", 1),),
        ),
        retention_days=3,
    )
    p.ingest(ev("c", at=H), stamp=T0 + H)
    p.ingest(ev("c", at=DAY + H), stamp=T0 + DAY + H)
    p.ingest(stamp=T0 + 4 * DAY)  # cutoff: T0 + 1 day, so day 0 ends at the cutoff
    assert p.state.query("c", 1, T0, T0 + 2 * DAY).count == 1
    assert [e.timestamp_us for e in p.state.list_events(1, *FAR, -1, 9)[0]] == [T0 + DAY + H]
    assert [a.cursor for a in p.state.list_alerts(1, -1, 9)[0]] == [1]  # 0 was before cutoff
    # An event for a period that already ended at the cutoff is expired on arrival: it is
    # stored (it has an offset) but counts nowhere, fires nothing and is not listed.
    late = p.ingest(ev("c", at=2 * H), stamp=T0 + 4 * DAY)
    assert late.first_offset is not None and late.alerts == ()
    assert p.state.query("c", 1, *FAR).count == 1
    assert len(p.state.list_events(1, *FAR, -1, 9)[0]) == 1


def test_list_events_pages_in_offset_order_over_every_metric() -> None:
    p = Partition(
        live("a", agg_type=AggType.COUNT, period_type=PeriodType.DAY),
        live("b", agg_type=AggType.SUM),
    )
    p.ingest(
        ev("a", at=DAY),
        ev("b", 5, at=0, props={"k": "v"}, event_id="i"),
        ev("a", at=0),
        ev("a", at=0, account=2),
    )
    page, cursor = p.state.list_events(1, T0, T0 + 2 * DAY, -1, 2)
    assert [(e.metric_code, e.offset & 0xFFFF) for e in page] == [("a", 0), ("b", 1)]
    assert (page[1].properties, page[1].event_id) == ({"k": "v"}, "i")
    page, cursor = p.state.list_events(1, T0, T0 + 2 * DAY, cursor, 2)  # type: ignore[arg-type]
    assert [e.offset & 0xFFFF for e in page] == [2] and cursor is None
    assert len(p.state.list_events(1, T0, T0 + 1, -1, 10)[0]) == 2  # [since, until)


def test_a_restored_snapshot_answers_and_applies_identically() -> None:
    seats = live(
        "u",
        agg_type=AggType.COUNT_UNIQUE,
        period_type=PeriodType.DAY,
        recurring=True,
        filters=(DimensionFilter("r", ("eu",)),),
        thresholds=(AlertThreshold("t", 2, recurring=True),),
    )
    p = Partition(seats, live("s", agg_type=AggType.SUM), live("l", agg_type=AggType.LATEST))
    p.ingest(
        ev("u", 1, props={"r": "eu"}, event_id="e"),
        ev("u", 2),
        ev("u", 2, at=DAY, op=REMOVE),  # carried sets must keep what day 1 removed
        ev("s", 2**70 // 2**10),
        ev("l", 5, props={"x": "y"}),
        producer=(4, 1),
    )
    p.schema(seats, live("s", agg_type=AggType.SUM))  # "l" deleted: events still listable
    p.schema(seats, live("s", 2, agg_type=AggType.SUM))  # a new "s"
    twin = PartitionState.from_snapshot(p.state.snapshot())
    assert twin.snapshot() == PartitionState.from_snapshot(twin.snapshot()).snapshot()
    entry = batch_entry(T0 + 41 * DAY, [ev("u", 3, at=2 * DAY), ev("u", 1, op=REMOVE, at=2 * DAY)])
    assert twin.apply(p.index + 1, entry) == p.state.apply(p.index + 1, entry)
    for state in (p.state, twin):
        assert state.query("u", 1, T0 + 2 * DAY, T0 + 3 * DAY).count == 1  # {1,2} -2 +3 -1
        assert state.query("s", 1, *FAR).count == 0
        assert len(state.list_events(1, *FAR, -1, 9)[0]) == 7
    assert twin.producer_outcome(4, 1) == p.state.producer_outcome(4, 1)
    assert twin.event_id_seen("u", 1, "e")


def test_a_shape_change_under_the_same_generation_starts_a_new_metric() -> None:
    p = Partition(live("c", agg_type=AggType.COUNT, period_type=PeriodType.DAY))
    p.ingest(ev("c"))
    p.schema(live("c", agg_type=AggType.COUNT, period_type=PeriodType.WEEK))
    assert p.state.query("c", 1, *FAR).count == 0


def test_property_maps_of_expired_events_are_collected() -> None:
    dims = (DimensionFilter("r", ("eu",)),)
    p = Partition(
        live("c", agg_type=AggType.COUNT, filters=dims, period_type=PeriodType.DAY),
        retention_days=2,
    )
    p.ingest(*[ev("c", props={"r": "eu", "n": str(n)}) for n in range(5000)], stamp=T0)
    p.ingest(ev("c", at=2 * DAY + 1, props={"r": "eu", "keep": "me"}), stamp=T0 + 2 * DAY)
    p.ingest(ev("c", at=3 * DAY, props={"r": "eu"}), stamp=T0 + 3 * DAY)  # day 0 expires
    assert len(p.state.props.maps) < 10  # the 5000 maps of day 0 are gone
    p.ingest(ev("c", at=3 * DAY + 1, props={"r": "eu", "keep": "me"}), stamp=T0 + 3 * DAY)
    events, _ = p.state.list_events(1, *FAR, -1, 10)
    assert [e.properties for e in events] == [
        {"r": "eu", "keep": "me"},
        {"r": "eu"},
        {"r": "eu", "keep": "me"},
    ]
    assert p.state.query("c", 1, *FAR, (("r", "eu"),)).count == 3


def test_retention_keeps_what_recurring_metrics_carry() -> None:
    seats = live(
        "u",
        agg_type=AggType.COUNT_UNIQUE,
        period_type=PeriodType.DAY,
        recurring=True,
        filters=(DimensionFilter("r", ("eu",)),),
    )
    balance = live(
        "b",
        agg_type=AggType.LATEST,
        period_type=PeriodType.DAY,
        recurring=True,
        filters=(DimensionFilter("r", ("eu",)),),
    )
    p = Partition(seats, balance, retention_days=2)
    p.ingest(
        ev("u", 1, props={"r": "eu"}),
        ev("u", 2),
        ev("b", 50, props={"r": "eu"}),
        ev("b", 7),
        stamp=T0,
    )
    p.ingest(ev("u", 2, at=DAY, op=REMOVE), stamp=T0 + DAY)
    p.ingest(stamp=T0 + 10 * DAY)  # days 0 and 1 are dropped
    assert p.state.list_events(1, *FAR, -1, 9)[0] == ()
    day9 = (T0 + 9 * DAY, T0 + 10 * DAY)
    assert p.state.query("u", 1, *day9).count == 1
    assert p.state.query("u", 1, *day9, (("r", "eu"),)).count == 1
    assert (p.state.query("b", 1, *day9).last_value, p.state.query("b", 1, *day9).count) == (7, 0)
    assert p.state.query("b", 1, *day9, (("r", "eu"),)).last_value == 50
    assert p.state.query("u", 1, T0, T0 + DAY).count == 0  # a dropped period reads empty


def test_recurring_unique_thresholds_see_late_events_flow_into_later_periods() -> None:
    every2 = AlertThreshold("every2", 2, recurring=True)
    p = Partition(
        live(
            "u",
            agg_type=AggType.COUNT_UNIQUE,
            period_type=PeriodType.DAY,
            recurring=True,
            thresholds=(every2,),
        )
    )
    fired = [
        a.value_at_cross
        for events in (
            [ev("u", 1)],
            [ev("u", 2, at=DAY), ev("u", 3, at=DAY)],  # day 1: {1, 2, 3}; 2 crosses 1 x 2
            [ev("u", 4, at=H)],  # late, day 0: {1, 4} crosses 1 x 2 for day 0
            [ev("u", 5, at=DAY + H)],  # day 1 is now {1, 2, 3, 4, 5}: crosses 2 x 2
        )
        for a in p.ingest(*events).alerts
    ]
    assert fired == [2, 2, 5]


def test_alerts_triggered_before_the_cutoff_are_not_listed() -> None:
    p = Partition(
        live("c", agg_type=AggType.COUNT, thresholds=(AlertThreshold("t", 1),)), retention_days=2
    )
    p.ingest(stamp=T0 + 10 * DAY)
    # A stamp far behind the newest one (a clock gone back): the alert is recorded with it...
    assert [a.cursor for a in p.ingest(ev("c", at=10 * DAY), stamp=T0).alerts] == [0]
    assert p.state.list_alerts(1, -1, 9) == ((), None)  # ...and is already past retention


def test_event_ids_stay_with_their_events_whichever_loop_applies_them() -> None:
    p = Partition(live("s", agg_type=AggType.SUM))
    p.ingest(ev("s", event_id="a"))
    p.ingest(ev("s"), ev("s"))  # a plain batch: the state's lean loop
    p.ingest(ev("s", event_id="b"))
    events, _ = p.state.list_events(1, *FAR, -1, 9)
    assert [e.event_id for e in events] == ["a", None, None, "b"]


def test_events_applied_without_dimensions_are_in_the_empty_cell_when_they_return() -> None:
    region = (DimensionFilter("region", ("eu",)),)
    p = Partition(live("s", agg_type=AggType.SUM, filters=region))
    p.ingest(ev("s", 1, props={"region": "eu"}))
    p.schema(live("s", agg_type=AggType.SUM))
    p.ingest(ev("s", 2))  # a plain batch: the state's lean loop
    p.schema(live("s", agg_type=AggType.SUM, filters=region))
    cells = dict(p.state.breakdown("s", 1, *FAR, ("region",)))
    assert {k: v.sum for k, v in cells.items()} == {(("region", "eu"),): 1, (): 2}
