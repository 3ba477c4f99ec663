"""Threshold crossings and the partition's alert log (docs/semantics.md §7).

A threshold is checked against its period's *total* after every event applied to that period,
in log order. Fired state is kept per record keyed by threshold code (value: 1 for a fired
one-shot threshold, the highest multiple fired for a recurring one), so reordering thresholds
in a schema update keeps it; ``alert_flags`` bits are derived at read time from the current
schema order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from unimeter.actors.aggregates import Threshold
from unimeter.wire.messages import StoredAlert


def crossings(
    fired: dict[str, int] | None, thresholds: Sequence[Threshold], total: int
) -> tuple[dict[str, int] | None, list[str] | None]:
    """Thresholds that ``total`` newly crosses, and the updated fired state."""
    crossed: list[str] | None = None
    for code, value, recurring in thresholds:
        if total < value:
            continue
        if recurring:
            multiple = total // value  # value > 0 for recurring thresholds (schema rule)
            if multiple <= (fired.get(code, 0) if fired is not None else 0):
                continue
        else:
            multiple = 1
            if fired is not None and code in fired:
                continue
        if fired is None:
            fired = {}
        fired[code] = multiple
        if crossed is None:
            crossed = []
        crossed.append(code)
    return fired, crossed


def flags_of(fired: dict[str, int] | None, thresholds: Sequence[Threshold]) -> int:
    if not fired:
        return 0
    flags = 0
    for bit, (code, _, _) in enumerate(thresholds):
        if code in fired:
            flags |= 1 << bit
    return flags


class AlertLog:
    """Every alert of the partition, per account in cursor order; cursors count from 0.

    ``ordered`` holds the same alerts in one cursor-ordered list, so a subscriber to every
    account of the partition catches up by bisection, not by merging every account's list.
    """

    __slots__ = ("by_account", "next_cursor", "ordered")

    def __init__(self) -> None:
        self.by_account: dict[int, list[StoredAlert]] = {}
        self.ordered: list[StoredAlert] = []
        self.next_cursor = 0

    def append(
        self, account_id: int, metric_code: str, threshold_code: str, value: int, at_us: int
    ) -> StoredAlert:
        alert = StoredAlert(
            account_id=account_id,
            metric_code=metric_code,
            threshold_code=threshold_code,
            value_at_cross=value,
            triggered_at_us=at_us,
            cursor=self.next_cursor,
        )
        self.next_cursor += 1
        self.ordered.append(alert)
        found = self.by_account.get(account_id)
        if found is None:
            self.by_account[account_id] = [alert]
        else:
            found.append(alert)
        return alert

    def page(
        self, account_id: int, after_cursor: int, limit: int, visible_from_us: int
    ) -> tuple[tuple[StoredAlert, ...], int | None]:
        return _page(self.by_account.get(account_id, []), after_cursor, limit, visible_from_us)

    def page_all(
        self, after_cursor: int, limit: int, visible_from_us: int
    ) -> tuple[tuple[StoredAlert, ...], int | None]:
        """Like ``page``, over every account of the partition."""
        return _page(self.ordered, after_cursor, limit, visible_from_us)

    def expire(self, visible_from_us: int) -> None:
        # Stamps may go back across a leader change, so the whole list is checked (this runs
        # once per day of log time at most).
        self.ordered = [a for a in self.ordered if a.triggered_at_us >= visible_from_us]
        for account_id in list(self.by_account):
            alerts = self.by_account[account_id]
            if min(a.triggered_at_us for a in alerts) >= visible_from_us:
                continue
            kept = [a for a in alerts if a.triggered_at_us >= visible_from_us]
            if kept:
                self.by_account[account_id] = kept
            else:
                del self.by_account[account_id]


def _page(
    alerts: list[StoredAlert], after_cursor: int, limit: int, visible_from_us: int
) -> tuple[tuple[StoredAlert, ...], int | None]:
    out: list[StoredAlert] = []
    for alert in alerts[bisect_right(alerts, after_cursor, key=lambda a: a.cursor) :]:
        if alert.triggered_at_us < visible_from_us:
            continue
        if len(out) == limit:
            return tuple(out), out[-1].cursor
        out.append(alert)
    return tuple(out), None
