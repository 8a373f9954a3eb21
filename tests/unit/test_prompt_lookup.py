"""PromptLookup: drafts what followed the latest earlier occurrence of the tail, nothing when nothing
matches; a declined proposal is checked against the tokens that follow (a shadow) and recorded as a
verified draft would be; lookups pause after wholly failed proposals in a row."""

from __future__ import annotations

from sysinfer.engine.prompt_lookup import PAUSE_MAX, PromptLookup
from sysinfer.engine.spec_policy import Acceptance


def test_drafts_follow_the_latest_match_of_the_longest_tail():
    lookup = PromptLookup([1, 2, 3, 4, 9, 2, 3, 5, 6, 7])
    lookup.extend([8, 2, 3])
    assert lookup.propose(6) == [5, 6, 7, 8, 2, 3]  # (2, 3) last seen before 5; (8, 2, 3) never
    assert lookup.propose(2) == [5, 6]              # never past the limit
    assert lookup.propose(0) == []


def test_a_match_close_behind_the_tail_goes_round_the_loop():
    lookup = PromptLookup([7, 1, 2, 3, 1, 2, 3, 1, 2])
    assert lookup.propose(8) == [3, 1, 2, 3, 1, 2, 3, 1]  # (3, 1, 2) last seen 3 back: a loop of 3
    lookup = PromptLookup([5, 5, 5, 5])
    assert lookup.propose(4) == [5, 5, 5, 5]


def test_no_match_no_draft():
    lookup = PromptLookup([10, 11, 12, 13])
    lookup.extend([14])
    assert lookup.propose(8) == []
    lookup = PromptLookup([7])
    assert lookup.propose(8) == []  # shorter than any n-gram


def test_a_declined_proposal_is_recorded_as_the_tokens_that_follow_would_have_verified_it():
    history = Acceptance(decay=1.0)
    lookup = PromptLookup([1, 2, 3, 4, 5, 6, 1, 2], history)
    proposal = lookup.propose(4)
    assert proposal == [3, 4, 5, 6]
    lookup.decline(proposal)
    assert lookup.propose(4) == []  # one shadow at a time
    lookup.extend([3, 4])           # the model goes on as the proposal said...
    assert history.reached == [0.0] * 8  # ...nothing recorded until the shadow is settled
    lookup.extend([9])              # ...then not: 2 of 4 would have been accepted
    assert history.reached[:4] == [1, 1, 1, 0] and history.accepted[:4] == [1, 1, 0, 0]
    lookup.extend([1, 2])
    proposal = lookup.propose(2)
    assert proposal == [3, 4]
    lookup.decline(proposal)
    lookup.extend([3, 4])           # wholly right: settled at its last token
    assert history.reached[:3] == [2, 2, 1] and history.accepted[:3] == [2, 2, 0]
    assert lookup.shadow == [] and lookup.propose(2) != []


def test_lookups_pause_longer_after_failures_in_a_row_and_resume_after_an_acceptance():
    lookup = PromptLookup([1, 2] * 20)
    pauses = []
    for _ in range(7):
        lookup.feedback(3, 0)
        pauses.append(lookup.pause)
        skipped = 0
        while lookup.propose(8) == []:
            skipped += 1
        assert skipped == pauses[-1]  # exactly that many lookups skipped, then drafts again
    assert pauses == [0, 1, 3, 7, PAUSE_MAX, PAUSE_MAX, PAUSE_MAX]
    lookup.feedback(1, 1)
    assert lookup.pause == 0 and lookup.misses == 0 and lookup.propose(8) != []
    lookup.feedback(0, 0)  # nothing drafted: nothing learnt
    assert lookup.misses == 0


def test_a_wholly_wrong_shadow_pauses_lookups_too():
    lookup = PromptLookup([1, 2, 3, 1, 2])
    lookup.decline(lookup.propose(3))
    lookup.extend([7])
    assert lookup.misses == 1
    lookup.decline(lookup.propose(3) or [5])
    lookup.extend([8])
    assert lookup.misses == 2 and lookup.pause == 1
