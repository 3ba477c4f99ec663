"""Quorum arithmetic for a fixed set of voting members.

Every rule that depends on "how many is enough" lives here, so a later move to joint consensus
(two member sets, each needing its own majority) changes one module. The functions are pure and
checked against a naive oracle in tests/test_quorum.py.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class VoteResult(enum.Enum):
    PENDING = "pending"  # neither outcome is decided by the votes received so far
    WON = "won"
    LOST = "lost"


def majority(size: int) -> int:
    """The smallest number of members that overlaps every other such group."""
    assert size > 0, "a group needs at least one member"
    return size // 2 + 1


@dataclass(frozen=True, slots=True)
class Membership:
    """The voting members of one Raft group. Static for now (no configuration changes)."""

    voters: frozenset[int]

    @classmethod
    def of(cls, members: Iterable[int]) -> Membership:
        voters = frozenset(members)
        assert voters, "a group needs at least one member"
        return cls(voters)

    def __contains__(self, node: object) -> bool:
        return node in self.voters

    def __len__(self) -> int:
        return len(self.voters)

    def sorted(self) -> tuple[int, ...]:
        return tuple(sorted(self.voters))

    @property
    def quorum(self) -> int:
        return majority(len(self.voters))

    def committed_index(self, match: Mapping[int, int]) -> int:
        """The highest index that a quorum of voters has (a missing voter counts as 0).

        Sorting the voters' match indexes in descending order, the quorum-th one is held by
        at least a quorum of voters, and no higher index is.
        """
        indexes = sorted((match.get(v, 0) for v in self.voters), reverse=True)
        return indexes[self.quorum - 1]

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """Tally granted (True) and rejected (False) votes; non-voters' votes are ignored."""
        granted = rejected = 0
        for voter in self.voters:
            vote = votes.get(voter)
            if vote is True:
                granted += 1
            elif vote is False:
                rejected += 1
        if granted >= self.quorum:
            return VoteResult.WON
        missing = len(self.voters) - granted - rejected
        if granted + missing >= self.quorum:
            return VoteResult.PENDING
        return VoteResult.LOST

    def has_quorum(self, members: Iterable[int]) -> bool:
        """Do the given nodes include a quorum of voters (e.g. the recently active ones)?"""
        return len(self.voters.intersection(members)) >= self.quorum
