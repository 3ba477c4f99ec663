"""The in-memory Raft log against a model, with released entries (payloads dropped, terms kept).

A lone member releases what it applied (``RaftLog.release``); everything else the log does --
terms, matching, conflicts, compaction, truncation of the held suffix, a snapshot restore --
must answer exactly as for a log that kept every payload, and the payloads of held entries
must be the ones appended.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.support.examples import examples
from unimeter.consensus.log import RaftLog
from unimeter.consensus.messages import LogEntry, SnapshotMeta


class LogModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = RaftLog(None, [])
        self.snap = (0, 0)  # (index, term) of the base
        self.terms: list[int] = []  # terms of snap+1 .. last
        self.data: list[bytes] = []
        self.held_from = 1
        self.made = 0

    def _payload(self) -> bytes:
        self.made += 1
        return b"p%d" % self.made

    @property
    def last(self) -> int:
        return self.snap[0] + len(self.terms)

    def _term_at(self, index: int) -> int | None:
        if index == self.snap[0]:
            return self.snap[1]
        if self.snap[0] < index <= self.last:
            return self.terms[index - self.snap[0] - 1]
        return None

    @rule(bump=st.integers(0, 2), count=st.integers(1, 4))
    def append(self, bump: int, count: int) -> None:
        term = (self.terms[-1] if self.terms else self.snap[1]) + bump
        for _ in range(count):
            data = self._payload()
            self.log.append(LogEntry(term=term, index=self.last + 1, data=data))
            self.terms.append(term)
            self.data.append(data)

    @precondition(lambda self: self.last >= self.held_from)
    @rule(back=st.integers(0, 5), count=st.integers(1, 3), bump=st.integers(1, 2))
    def replace_suffix(self, back: int, count: int, bump: int) -> None:
        first = max(self.held_from, self.last - back)
        term = max(self.terms) + bump
        entries = []
        for i in range(count):
            entries.append(LogEntry(term=term, index=first + i, data=self._payload()))
        self.log.truncate_and_append(entries)
        keep = first - self.snap[0] - 1
        del self.terms[keep:], self.data[keep:]
        self.terms += [term] * count
        self.data += [e.data for e in entries]

    @rule(ahead=st.integers(0, 6))
    def release(self, ahead: int) -> None:
        index = self.held_from - 1 + ahead
        self.log.release(index)
        self.held_from = max(self.held_from, min(index, self.last) + 1)

    @precondition(lambda self: self.last > self.snap[0])
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(self.snap[0] + 1, self.last))
        term = self._term_at(index)
        assert term is not None
        self.log.compact(index)
        cut = index - self.snap[0]
        del self.terms[:cut], self.data[:cut]
        self.snap = (index, term)
        self.held_from = max(self.held_from, index + 1)

    @rule(ahead=st.integers(1, 5), bump=st.integers(0, 2))
    def restore(self, ahead: int, bump: int) -> None:
        meta = SnapshotMeta(index=self.last + ahead, term=max([self.snap[1], *self.terms]) + bump,
                            members=(1,))  # fmt: skip
        self.log.restore(meta)
        self.snap = (meta.index, meta.term)
        self.terms, self.data = [], []
        self.held_from = meta.index + 1

    @invariant()
    def answers_like_the_model(self) -> None:
        log = self.log
        assert log.last_index == self.last
        assert log.held_from == self.held_from
        assert log.last_term == (self.terms[-1] if self.terms else self.snap[1])
        for index in range(max(0, self.snap[0] - 1), self.last + 2):
            assert log.term_at(index) == self._term_at(index), index
        if self.held_from <= self.last:
            held = log.entries_from(self.held_from)
            assert [e.index for e in held] == list(range(self.held_from, self.last + 1))
            offset = self.held_from - self.snap[0] - 1
            assert [e.data for e in held] == self.data[offset:]
            assert [e.term for e in held] == self.terms[offset:]
        for term in range(0, (max(self.terms) if self.terms else self.snap[1]) + 2):
            expected = self.last
            while expected > self.snap[0] and self.terms[expected - self.snap[0] - 1] > term:
                expected -= 1
            assert log.find_conflict_by_term(self.last, term) == expected


LogModel.TestCase.settings = settings(max_examples=examples(60), stateful_step_count=40,
                                      deadline=None)  # fmt: skip
test_the_log_answers_like_a_model = LogModel.TestCase


def test_a_released_entry_is_not_handed_out() -> None:
    log = RaftLog(None, [LogEntry(term=1, index=i, data=b"x") for i in range(1, 6)])
    log.release(3)
    assert log.term_at(3) == 1 and log.held_from == 4
    assert [e.index for e in log.span(4, 5)] == [4, 5]
    with pytest.raises(AssertionError):
        log.span(3, 5)
