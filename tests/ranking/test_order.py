"""Pure ranking functions: IterComp rank semantics, ties, Borda, agreement, binary insertion."""

from __future__ import annotations

import itertools
import random

import pytest

from compalign.ranking.order import (
    RankError,
    binary_insertion,
    borda,
    check_rank,
    check_ties,
    insert_with,
    kendall_agreement,
    max_questions,
    order_ties_to_tiers,
    rank_to_order,
    rank_to_tiers,
    ranked_pairs,
    tiers_to_rank,
)

ITERCOMP_MODELS = ["sd15", "sdxl", "sd3", "flux", "rpg", "instancediffusion"]


def test_itercomp_rank_semantics():
    # README: [4, 3, 5, 2, 1, 6] means flux (4th model) first, sd3 (3rd) second, ...
    order = rank_to_order([4, 3, 5, 2, 1, 6], ITERCOMP_MODELS)
    assert order == ["flux", "sd3", "rpg", "sdxl", "sd15", "instancediffusion"]
    rank, ties = tiers_to_rank([[m] for m in order], ITERCOMP_MODELS)
    assert rank == [4, 3, 5, 2, 1, 6] and ties == []


@pytest.mark.parametrize("bad", [[1, 1, 2], [1, 2], [0, 1, 2], [1, 2, 4], "123", [1, 2, 3.0], [True, 2, 3]])
def test_check_rank_rejects(bad):
    with pytest.raises(RankError):
        check_rank(bad, 3)


def test_ties_roundtrip_and_checks():
    models = ["a", "b", "c", "d"]
    tiers = rank_to_tiers([2, 3, 1, 4], [[2, 3]], models)
    assert tiers == [["b", "c"], ["a"], ["d"]]
    assert tiers_to_rank(tiers, models) == ([2, 3, 1, 4], [[2, 3]])
    with pytest.raises(RankError, match="contiguous"):
        check_ties([[2, 1]], [2, 3, 1, 4])
    with pytest.raises(RankError, match="overlaps"):
        check_ties([[2, 3], [3, 1]], [2, 3, 1, 4])
    with pytest.raises(RankError):
        check_ties([[2]], [2, 3, 1, 4])
    assert ranked_pairs(tiers) == [("b", "a"), ("b", "d"), ("c", "a"), ("c", "d"), ("a", "d")]


def test_order_ties_to_tiers_validates_names():
    models = ["a", "b", "c"]
    assert order_ties_to_tiers(["c", "a", "b"], [["a", "b"]], models) == [["c"], ["a", "b"]]
    for order, ties in (
        (["a", "b"], []),
        (["a", "b", "x"], []),
        (["a", "a", "b"], []),
        (["a", "b", "c"], [["a", "c"]]),
    ):
        with pytest.raises(RankError):
            order_ties_to_tiers(order, ties, models)


def test_borda_counts_and_ties():
    models = ["a", "b", "c"]
    tiers, points = borda([[["a"], ["b"], ["c"]], [["b"], ["a"], ["c"]]], models)
    assert points == {"a": 3.0, "b": 3.0, "c": 0.0}
    assert tiers == [["a", "b"], ["c"]]  # equal totals share a place, in model order
    # a tie inside one annotator's order gives half points to each member
    tiers, points = borda([[["a", "b"], ["c"]]], models)
    assert points == {"a": 1.5, "b": 1.5, "c": 0.0}
    tiers, _ = borda([[["c"], ["a"], ["b"]], [["c"], ["b"], ["a"]], [["a"], ["c"], ["b"]]], models)
    assert tiers == [["c"], ["a"], ["b"]]


def test_kendall_agreement():
    same = {0: [["a"], ["b"], ["c"]], 1: [["c"], ["b"], ["a"]]}
    rev = {0: [["c"], ["b"], ["a"]], 1: [["c"], ["b"], ["a"]]}
    got = kendall_agreement({"x": same, "y": rev, "z": {5: [["a"], ["b"]]}})
    # record 0: tau -1, record 1: tau 1 -> mean 0; z shares no record
    assert got["n_pairs"] == 2 and got["mean_tau"] == pytest.approx(0.0) and got["annotators"] == 3
    tied = kendall_agreement({"x": {0: [["a", "b"]]}, "y": {0: [["a"], ["b"]]}})
    assert tied["mean_tau"] is None and tied["n_undefined"] == 1


# ---------------------------------------------------------------------------------------- insertion


def slot_oracle(target_slot: int, tiers):
    """Answers that place the new model in `target_slot` (0 = before every tier)."""

    def compare(new, existing):
        k = next(i for i, t in enumerate(tiers) if existing in t)
        return "new" if target_slot <= k else "existing"

    return compare


@pytest.mark.parametrize("n_tiers", range(0, 8))
def test_every_slot_and_every_tier_reachable(n_tiers):
    tiers = [[f"m{i}"] for i in range(n_tiers)]
    for slot in range(n_tiers + 1):
        out, asked = insert_with(tiers, ["new"], slot_oracle(slot, tiers))
        assert out == tiers[:slot] + [["new"]] + tiers[slot:], (n_tiers, slot)
        assert len(asked) <= max_questions(n_tiers)
        if slot == 0 and n_tiers:
            # first place is only given after comparing with the current first place
            assert any(q.existing == "m0" for q in asked)
    for k in range(n_tiers):

        def compare(new, existing, k=k):
            j = int(existing[1:])
            return "tie" if j == k else ("new" if k < j else "existing")

        out, asked = insert_with(tiers, ["new"], compare)
        assert out == [t + ["new"] if i == k else t for i, t in enumerate(tiers)]
        assert len(asked) <= max_questions(n_tiers)


def test_insertion_into_tiers_compares_with_a_tier_member():
    tiers = [["a", "b"], ["c"], ["d", "e", "f"]]
    out, asked = insert_with(tiers, ["n"], lambda new, ex: "existing" if ex in "ab" else "new")
    assert out == [["a", "b"], ["n"], ["c"], ["d", "e", "f"]]
    assert all(q.existing in ("a", "c", "d") for q in asked)


def test_multiple_new_models_sorted_by_hidden_order():
    rng = random.Random(0)
    for trial in range(40):
        n_old, n_new = rng.randint(0, 6), rng.randint(1, 3)
        names = [f"o{i}" for i in range(n_old)] + [f"n{i}" for i in range(n_new)]
        score = {m: rng.randint(0, 4) for m in names}  # hidden quality; equal scores are ties
        old = [m for m in names if m.startswith("o")]
        levels = sorted({score[m] for m in old}, reverse=True)
        tiers = [[m for m in old if score[m] == v] for v in levels]
        new = [m for m in names if m.startswith("n")]

        def compare(a, b, score=score):
            return "new" if score[a] > score[b] else "existing" if score[a] < score[b] else "tie"

        out, asked = insert_with(tiers, new, compare)
        got = [sorted(t) for t in out]
        want_levels = sorted({score[m] for m in names}, reverse=True)
        assert got == [sorted(m for m in names if score[m] == v) for v in want_levels], trial
        # the later new models are compared against the earlier ones too, when needed
        assert len(asked) <= sum(max_questions(len(tiers) + i) for i in range(n_new))


def test_replay_is_pure_and_resumable():
    tiers = [["a"], ["b"], ["c"]]
    s0 = binary_insertion(tiers, ["x", "y"], [])
    assert not s0.done and s0.question.new == "x" and s0.question.step == 0
    s1 = binary_insertion(tiers, ["x", "y"], ["new"])
    assert s1.question.step == 1
    answers = []
    state = s0
    while not state.done:
        answers.append("new")  # each new one beats everything it meets
        state = binary_insertion(tiers, ["x", "y"], answers)
    assert state.tiers == [["y"], ["x"], ["a"], ["b"], ["c"]]
    assert binary_insertion(tiers, ["x", "y"], answers) == state  # same answers, same result
    assert tiers == [["a"], ["b"], ["c"]]  # input untouched
    with pytest.raises(RankError, match="left over"):
        binary_insertion(tiers, ["x", "y"], answers + ["tie"])
    with pytest.raises(RankError):
        binary_insertion(tiers, ["x"], ["maybe"])
    with pytest.raises(RankError):
        binary_insertion(tiers, ["a"], [])


def test_all_orders_of_three_reachable_by_insertion():
    """Inserting two new models into one old: every weak order of the three can come out."""
    seen = set()
    runs = (a for n in range(5) for a in itertools.product(("new", "existing", "tie"), repeat=n))
    for answers in runs:
        try:
            s = binary_insertion([["o"]], ["x", "y"], list(answers))
        except RankError:
            continue
        if s.done:
            seen.add(tuple(tuple(sorted(t)) for t in s.tiers))
    assert len(seen) == 13  # the number of weak orders of 3 items (ordered Bell number)
