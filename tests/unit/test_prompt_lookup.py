"""PromptLookup: drafts what followed the latest earlier occurrence of the tail, nothing when nothing
matches, k adapting to acceptance, and lookups pausing after wholly rejected drafts."""

from __future__ import annotations

from sysinfer.engine.prompt_lookup import K_MAX, K_START, PAUSE_MAX, PromptLookup


def test_drafts_follow_the_latest_match_of_the_longest_tail():
    lookup = PromptLookup([1, 2, 3, 4, 9, 2, 3, 5, 6, 7])
    lookup.extend([8, 2, 3])
    assert lookup.propose(8) == [5, 6, 7, 8][:K_START]  # (2, 3) last seen before 5; (8, 2, 3) never
    assert lookup.propose(2) == [5, 6]                  # never past the limit
    assert lookup.propose(0) == []


def test_no_match_no_draft():
    lookup = PromptLookup([10, 11, 12, 13])
    lookup.extend([14])
    assert lookup.propose(8) == []
    lookup = PromptLookup([7])
    assert lookup.propose(8) == []  # shorter than any n-gram


def test_k_adapts_to_acceptance():
    lookup = PromptLookup([1, 2] * 20)
    lookup.feedback(4, 4)
    assert lookup.k == K_START + 2
    for _ in range(5):
        lookup.feedback(lookup.k, lookup.k)
    assert lookup.k == K_MAX
    lookup.feedback(8, 2)
    assert lookup.k == 3 and lookup.pause == 0  # a partial acceptance shrinks k, no pause
    lookup.feedback(0, 0)  # nothing drafted: nothing learnt
    assert lookup.k == 3


def test_lookups_pause_longer_after_rejections_in_a_row_and_resume_after_an_acceptance():
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
