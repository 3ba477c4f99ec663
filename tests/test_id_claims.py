"""The leader's in-flight event-id claims against a set model.

The filter has 4 slots and keys come from a small range, so most keys share slots with keys of
other entries, of released entries and of dropped stages: every path of the lazy release.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.support.examples import examples
from unimeter.actors.claims import IdClaims

U64 = np.dtype("<u8")
_keys = st.lists(st.integers(0, 40), max_size=12)


class ClaimsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.claims = IdClaims(bits=2)
        self.applied = 0
        self.last = 0  # the last log index proposed (or skipped: no-ops, schema entries)
        self.pending: dict[int, set[int]] = {}  # index -> keys, not applied yet
        self.staged: set[int] = set()

    def _taken(self) -> set[int]:
        return self.staged.union(*self.pending.values())

    @rule(keys=_keys)
    def stage(self, keys: list[int]) -> None:
        # The actor stages only keys nobody has: what ``taken`` said no to.
        fresh = sorted(set(keys) - self._taken())
        self.claims.stage(np.array(fresh, U64))
        self.staged.update(fresh)

    @rule(gap=st.integers(1, 3))
    def propose(self, gap: int) -> None:
        self.last += gap
        self.claims.claim_staged(self.last)
        if self.staged:
            self.pending[self.last] = self.staged
        self.staged = set()

    @rule()
    def drop(self) -> None:
        self.claims.drop_staged()
        self.staged = set()

    @precondition(lambda self: self.applied < self.last)
    @rule()
    def apply(self) -> None:
        self.applied += 1
        self.claims.release(self.applied)
        self.pending.pop(self.applied, None)

    @rule()
    def lose_leadership(self) -> None:
        self.claims.clear()
        self.pending.clear()
        self.staged = set()

    @rule(probe=_keys)
    def ask(self, probe: list[int]) -> None:
        taken = self.claims.taken(np.array(probe, U64), self.applied).tolist()
        model = self._taken()
        assert taken == [k in model for k in probe]

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.claims) == len(self.staged) + sum(map(len, self.pending.values()))


ClaimsMachine.TestCase.settings = settings(max_examples=examples(150), stateful_step_count=40,
                                           deadline=None)  # fmt: skip
test_claims_hold_what_a_set_model_holds = ClaimsMachine.TestCase


def test_a_column_of_random_keys_is_answered_through_the_filter() -> None:
    rng = np.random.default_rng(3)
    claims = IdClaims()
    draws = [rng.integers(0, 2**64, 4_000, dtype=U64, endpoint=False) for _ in range(4)]
    entries = [np.unique(keys) for keys in draws]
    for index, keys in enumerate(entries, start=1):
        claims.stage(keys[:2_000])
        claims.stage(keys[2_000:])
        claims.claim_staged(index)
    claims.release(1)
    probe = np.concatenate([entries[0][:100], entries[3][:100], rng.integers(0, 2**64, 100, U64)])
    taken = claims.taken(probe, applied_index=1)
    assert taken[:100].tolist() == [False] * 100
    assert taken[100:200].all()
    assert taken[200:].tolist() == np.isin(probe[200:], np.concatenate(entries[1:])).tolist()
