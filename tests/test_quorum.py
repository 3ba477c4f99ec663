"""Quorum arithmetic against a naive oracle (etcd-io/raft quorum/quick_test.go style)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unimeter.consensus.quorum import Membership, VoteResult, majority

voter_sets = st.frozensets(st.integers(min_value=1, max_value=9), min_size=1, max_size=7)


def naive_committed(voters: frozenset[int], match: dict[int, int]) -> int:
    """The largest index that at least a majority of voters have reached, by brute force."""
    best = 0
    for candidate in {0, *match.values()}:
        holders = sum(1 for v in voters if match.get(v, 0) >= candidate)
        if holders * 2 > len(voters):
            best = max(best, candidate)
    return best


def naive_vote(voters: frozenset[int], votes: dict[int, bool]) -> VoteResult:
    """Decided iff every way of filling in the missing votes gives the same answer."""
    missing = [v for v in voters if v not in votes]
    outcomes = set()
    for fill in itertools.product([True, False], repeat=len(missing)):
        complete = {
            **{v: votes[v] for v in voters if v in votes},
            **dict(zip(missing, fill, strict=True)),
        }
        granted = sum(complete.values())
        outcomes.add(granted * 2 > len(voters))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


@st.composite
def voters_and_matches(draw: st.DrawFn) -> tuple[frozenset[int], dict[int, int]]:
    voters = draw(voter_sets)
    # Some voters unknown (missing = 0) and some non-voters present (must be ignored).
    keys = st.sampled_from(sorted(voters | {20, 21}))
    match = draw(st.dictionaries(keys, st.integers(min_value=0, max_value=50), max_size=9))
    return voters, match


@st.composite
def voters_and_votes(draw: st.DrawFn) -> tuple[frozenset[int], dict[int, bool]]:
    voters = draw(voter_sets)
    keys = st.sampled_from(sorted(voters | {20}))
    return voters, draw(st.dictionaries(keys, st.booleans(), max_size=8))


@settings(max_examples=200, deadline=None)
@given(voters_and_matches())
def test_committed_index_matches_oracle(case: tuple[frozenset[int], dict[int, int]]) -> None:
    voters, match = case
    assert Membership(voters).committed_index(match) == naive_committed(voters, match)


@settings(max_examples=200, deadline=None)
@given(voters_and_votes())
def test_vote_result_matches_oracle(case: tuple[frozenset[int], dict[int, bool]]) -> None:
    voters, votes = case
    assert Membership(voters).vote_result(votes) == naive_vote(voters, votes)


@settings(max_examples=200, deadline=None)
@given(voter_sets, st.frozensets(st.integers(min_value=1, max_value=25)))
def test_has_quorum_matches_oracle(voters: frozenset[int], active: frozenset[int]) -> None:
    assert Membership(voters).has_quorum(active) == (len(voters & active) * 2 > len(voters))


@pytest.mark.parametrize(("size", "expected"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(size: int, expected: int) -> None:
    assert majority(size) == expected


def test_examples() -> None:
    three = Membership.of([1, 2, 3])
    assert three.committed_index({1: 5, 2: 3, 3: 1}) == 3
    assert three.committed_index({1: 5}) == 0
    assert three.vote_result({1: True}) is VoteResult.PENDING
    assert three.vote_result({1: True, 2: True}) is VoteResult.WON
    assert three.vote_result({1: True, 2: False, 3: False}) is VoteResult.LOST
    assert Membership.of([1]).vote_result({1: True}) is VoteResult.WON


def test_empty_membership_is_refused() -> None:
    with pytest.raises(AssertionError):
        Membership.of([])
