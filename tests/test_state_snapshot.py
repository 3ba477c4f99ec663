"""The snapshot format: a state with every kind of content, versions, the node's refusal.

The random round trips (every aggregation, dimensions, removes, event ids, alerts, deleted
metrics, expiry, then further entries) run inside the model test, tests/test_partition_state.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cbor2
import pytest

from tests.partition_helpers import DAY, FAR, REMOVE, T0, Partition, batch_entry, ev, live
from tests.state_structure import structure
from tests.support.nodeproc import NodeProcess
from unimeter.model import AggType, AlertThreshold, DimensionFilter, PeriodType
from unimeter.state import snapshot as state_snapshot
from unimeter.state.instances import NumBase, UniqBase
from unimeter.state.partition_state import PartitionState
from unimeter.state.snapshot import FORMAT_VERSION, SnapshotFormatError
from unimeter.storage.snapshot import load_latest_snapshot, snapshot_indexes, write_snapshot

BIG_ACCOUNT = 2**64 - 1


# --------------------------------------------------------------------------- a whole state


def rich_partition() -> Partition:
    """Every kind of content a snapshot carries, including bases, dead buckets and bignums."""
    region = (DimensionFilter("r", ("eu", "us")),)
    seats = live(
        "u",
        agg_type=AggType.COUNT_UNIQUE,
        period_type=PeriodType.DAY,
        recurring=True,
        filters=region,
        thresholds=(AlertThreshold("two", 2, recurring=True),),
    )
    latest = live("l", agg_type=AggType.LATEST, period_type=PeriodType.DAY, filters=region)
    total = live(
        "s", agg_type=AggType.SUM, thresholds=(AlertThreshold("huge", 2**62 + 1, recurring=True),)
    )
    peak = live("m", agg_type=AggType.MAX)
    count = live("c", agg_type=AggType.COUNT, period_type=PeriodType.DAY)
    p = Partition(seats, latest, total, peak, count, retention_days=3, window=5)
    for day in range(3):
        at = day * DAY
        p.ingest(
            ev("u", 1, at=at + 1, props={"r": "eu"}, event_id=f"u{day}"),
            ev("u", 2, at=at + 2, props={"r": "us"}),
            ev("u", 1, at=at + 3, op=REMOVE),
            ev("u", 7, at=at + 4, account=BIG_ACCOUNT),
            ev("l", 5 - day, at=at + 1, props={"r": "eu", "x": str(day)}),
            ev("l", 9, at=at + 2),
            ev("s", 2**62, at=at + 1),
            ev("s", 2**62, at=at + 2, account=BIG_ACCOUNT),
            ev("m", -3 - day, at=at + 1, event_id=f"m{day}"),
            ev("c", 1, at=at + 5),
            stamp=T0 + at + DAY // 2,
            producer=(4, day + 1),
        )
    p.schema(seats, latest, total, count)  # "m" deleted: its events stay listable
    p.ingest(ev("s", 2**62, at=5 * DAY), stamp=T0 + 5 * DAY + 1, producer=(5, 1))  # expiry
    return p


def test_a_state_with_every_kind_of_content_round_trips_and_goes_on_identically() -> None:
    p = rich_partition()
    kinds = {type(b) for inst in p.state.instances.values() for b in inst.base.values()}
    assert kinds == {NumBase, UniqBase}  # expiry carried latest values and unique sets
    assert any(not inst.live for inst in p.state.instances.values())  # "m" was deleted
    alerts = [a for kept in p.state.alerts.by_account.values() for a in kept]
    assert max(a.value_at_cross for a in alerts) > 2**63  # a sum past int64
    assert p.state.tables.rows.big_sums or p.state.tables.rows.sum_hi.any()

    data = p.state.snapshot()
    twin = PartitionState.from_snapshot(data)
    assert structure(twin) == structure(p.state)
    assert twin.snapshot() == data

    later = [
        batch_entry(
            T0 + 6 * DAY, [ev("u", 3, at=5 * DAY, props={"r": "eu"}), ev("l", 4, at=6 * DAY)]
        ),
        batch_entry(T0 + 7 * DAY, [ev("u", 2, at=7 * DAY, op=REMOVE), ev("s", 1, at=7 * DAY)]),
    ]
    for entry in later:
        p.index += 1
        assert twin.apply(p.index, entry) == p.state.apply(p.index, entry)
        assert structure(twin) == structure(p.state)
    for state in (p.state, twin):
        assert state.query("u", 1, T0 + 7 * DAY, T0 + 8 * DAY).count == 1  # {2, 3} - 2
        assert state.query("s", BIG_ACCOUNT, *FAR).sum == 3 * 2**62
    for account in (1, BIG_ACCOUNT):
        assert twin.list_events(account, *FAR, -1, 50) == p.state.list_events(account, *FAR, -1, 50)
        assert twin.list_alerts(account, -1, 50) == p.state.list_alerts(account, -1, 50)
        assert twin.breakdown("u", account, *FAR, ("r",)) == p.state.breakdown(
            "u", account, *FAR, ("r",)
        )
    assert twin.producer_outcome(5, 1) == p.state.producer_outcome(5, 1)
    assert twin.event_id_seen("u", 1, "u2") == p.state.event_id_seen("u", 1, "u2")


def test_an_empty_state_round_trips() -> None:
    state = PartitionState(7, retention_days=9, dedup_window_days=4)
    twin = PartitionState.from_snapshot(state.snapshot())
    assert structure(twin) == structure(state)


# --------------------------------------------------------------------------- versions


def test_the_format_version_leads_the_bytes() -> None:
    data = PartitionState(1).snapshot()
    assert data[:6] == b"UMPS" + struct.pack("<H", FORMAT_VERSION)
    assert state_snapshot.format_version(data) == FORMAT_VERSION


def test_an_unknown_version_is_refused() -> None:
    data = bytearray(PartitionState(1).snapshot())
    struct.pack_into("<H", data, 4, FORMAT_VERSION + 1)
    with pytest.raises(SnapshotFormatError, match=f"version {FORMAT_VERSION + 1}; this node"):
        PartitionState.from_snapshot(bytes(data))
    old_format = cbor2.dumps({"format": 2, "partition": 1})  # before the header existed
    with pytest.raises(SnapshotFormatError, match="no partition-state format header") as caught:
        PartitionState.from_snapshot(old_format)
    assert caught.value.version is None


def test_the_node_refuses_a_snapshot_version_it_does_not_know(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", partitions=1).start()
    assert node.terminate() == 0  # a clean stop snapshots the partition
    directory = tmp_path / "node" / "partitions" / "0000"
    found = load_latest_snapshot(directory)
    assert found is not None
    index, payload = found
    term, members, app = cbor2.loads(payload)
    future = bytearray(app)
    struct.pack_into("<H", future, 4, 999)
    write_snapshot(directory, index, cbor2.dumps([term, members, bytes(future)]))
    with pytest.raises(RuntimeError, match="node exited with 2"):
        node.start()
    log = node.log()
    assert "event=unreadable_snapshot" in log
    assert str(snapshot_indexes(directory)[index]) in log
    assert "version 999; this node reads only version" in log


def test_the_node_refuses_a_data_directory_of_an_older_data_format(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", partitions=1).start()
    assert node.terminate() == 0
    identity = tmp_path / "node" / "cluster.cbor"
    meta = cbor2.loads(identity.read_bytes())
    assert meta["data_format"] == 2
    del meta["data_format"]  # as directories written before the columnar layout are
    identity.write_bytes(cbor2.dumps(meta))
    with pytest.raises(RuntimeError, match="node exited with"):
        node.start()
    assert "event=unreadable_data_dir" in node.log()
    assert "holds data format 1" in node.log()
