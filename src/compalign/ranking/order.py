"""Rankings as pure data: IterComp rank lists, tiers (orders with ties), Borda count, agreement,
and the binary insertion of new models into an existing order.

Conventions

- A record's *models* are its ``image_<model>`` keys in the record's order.
- IterComp's ``rank``: "the i-th element j of `rank` says the j-th model (1-based, in the record's
  image order) is ranked i-th". ``rank = [2, 3, 1]`` over models ``[a, b, c]`` is the order
  ``b > c > a``.
- Ties are explicit groups of the same 1-based model numbers (``rank_ties = [[2, 3]]``: b and c
  share a place); a group is contiguous in ``rank``. Internally an order with ties is a list of
  *tiers*, best first, each a list of model names (``[["b", "c"], ["a"]]``).

Aggregation of several annotators (`borda`): each annotator gives a model one point for every
model it places strictly below it, plus half a point for every other model in its own tier (the
usual Borda tie rule, so a tier's points are the mean of the places it spans); points are summed
over annotators and models with equal totals share a tier.

Agreement (`kendall_agreement`): Kendall's tau-b (``scipy.stats.kendalltau``, which handles
ties) between two annotators' tier positions on one record, averaged over every (annotator pair,
shared record); pairs where tau is undefined (an annotator tied everything) are counted apart.

Binary insertion (`binary_insertion`): a new model is placed into the tiers by binary search over
the ``T + 1`` slots around ``T`` tiers, asking "new vs. a member of the middle tier": better moves
the search up, worse moves it down, a tie joins that tier. Every slot (first place included: the
search compares with the current first tier before placing there) and every tier is reachable, in
at most ``ceil(log2(T + 1))`` questions per new model. Several new models are inserted one after
the other, each into the tiers that already hold the earlier ones. The function is pure: it
replays a list of answers and returns either the next question or the final tiers, so a web tool
can store answers and resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

Tiers = list[list[str]]

OUTCOMES = ("new", "existing", "tie")
"""Answers to "is the new image better than the existing one?": new better, existing better, tie."""


class RankError(ValueError):
    """A rank, tie list or order that does not fit the record's models."""


# ----------------------------------------------------------------------------- rank lists


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_rank(rank, n: int) -> list[int]:
    """`rank` as a list of ints if it is a permutation of 1..n, else `RankError`."""
    if not isinstance(rank, list):
        raise RankError(f"must be a list of model numbers 1..{n}, got {type(rank).__name__}")
    if not all(is_int(j) for j in rank):
        raise RankError(f"{rank} must hold integers 1..{n}")
    if sorted(rank) != list(range(1, n + 1)):
        raise RankError(f"{rank} is not a permutation of 1..{n} (one entry per model of the record)")
    return list(rank)


def check_ties(groups, rank: Sequence[int]) -> list[list[int]]:
    """Tie groups over 1-based model numbers: each of 2+ distinct members, disjoint, contiguous in `rank`."""
    if not isinstance(groups, list):
        raise RankError(f"tie groups must be a list of lists, got {type(groups).__name__}")
    pos = {j: i for i, j in enumerate(rank)}
    seen: set[int] = set()
    out = []
    for g in groups:
        if not isinstance(g, list) or len(g) < 2 or not all(is_int(j) for j in g):
            raise RankError(f"tie group {g!r} must be a list of 2 or more model numbers")
        if len(set(g)) != len(g) or any(j not in pos for j in g):
            raise RankError(f"tie group {g} must hold distinct model numbers 1..{len(rank)}")
        if seen & set(g):
            raise RankError(f"tie group {g} overlaps another group")
        seen |= set(g)
        places = sorted(pos[j] for j in g)
        if places[-1] - places[0] != len(g) - 1:
            raise RankError(f"tie group {g} is not contiguous in the rank {list(rank)}")
        out.append(sorted(g, key=pos.__getitem__))
    return out


def rank_to_order(rank: Sequence[int], models: Sequence[str]) -> list[str]:
    """IterComp rank -> model names best first."""
    return [models[j - 1] for j in rank]


def order_to_rank(order: Sequence[str], models: Sequence[str]) -> list[int]:
    """Model names best first -> IterComp rank (1-based numbers in the record's model order)."""
    num = {m: i + 1 for i, m in enumerate(models)}
    return [num[m] for m in order]


def rank_to_tiers(rank: Sequence[int], ties: Sequence[Sequence[int]], models: Sequence[str]) -> Tiers:
    """IterComp rank + tie groups (1-based numbers) -> tiers of model names."""
    group_of = {j: k for k, g in enumerate(ties) for j in g}
    tiers: Tiers = []
    last = None
    for j in rank:
        k = group_of.get(j)
        if k is not None and k == last:
            tiers[-1].append(models[j - 1])
        else:
            tiers.append([models[j - 1]])
        last = k
    return tiers


def tiers_to_rank(tiers: Sequence[Sequence[str]], models: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Tiers -> (IterComp rank, tie groups), both in 1-based numbers of `models`."""
    check_tiers(tiers, models)
    order = [m for t in tiers for m in t]
    num = {m: i + 1 for i, m in enumerate(models)}
    ties = [[num[m] for m in t] for t in tiers if len(t) > 1]
    return [num[m] for m in order], ties


def check_tiers(tiers, models: Sequence[str]) -> Tiers:
    """Tiers must cover `models` exactly once each."""
    if not isinstance(tiers, (list, tuple)) or not all(isinstance(t, (list, tuple)) and t for t in tiers):
        raise RankError("an order must be a list of non-empty tiers")
    flat = [m for t in tiers for m in t]
    if sorted(flat) != sorted(models) or len(set(flat)) != len(flat):
        raise RankError(f"order {flat} is not a permutation of the models {list(models)}")
    return [list(t) for t in tiers]


def order_ties_to_tiers(order: Sequence[str], ties: Sequence[Sequence[str]], models: Sequence[str]) -> Tiers:
    """A flat order of model names plus tie groups of names -> tiers (validated against `models`)."""
    if not isinstance(order, list) or not all(isinstance(m, str) for m in order):
        raise RankError("order must be a list of model names")
    unknown = [m for m in order if m not in models]
    if unknown:
        raise RankError(f"unknown model {unknown[0]!r} in order; the record's models are {list(models)}")
    if sorted(order) != sorted(models) or len(set(order)) != len(order):
        raise RankError(f"order {order} is not a permutation of the record's models {list(models)}")
    if not isinstance(ties, list) or not all(
        isinstance(g, list) and all(isinstance(m, str) for m in g) for g in ties
    ):
        raise RankError("ties must be a list of lists of model names")
    num = {m: i + 1 for i, m in enumerate(models)}
    for g in ties:
        unknown = [m for m in g if m not in num]
        if unknown:
            raise RankError(f"unknown model {unknown[0]!r} in ties")
    groups = check_ties([[num[m] for m in g] for g in ties], [num[m] for m in order])
    return rank_to_tiers([num[m] for m in order], groups, models)


def tier_positions(tiers: Sequence[Sequence[str]]) -> dict[str, int]:
    return {m: k for k, t in enumerate(tiers) for m in t}


def ranked_pairs(tiers: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """Every (better, worse) pair of an order; models of the same tier give no pair."""
    return [(a, b) for i, t in enumerate(tiers) for a in t for u in tiers[i + 1 :] for b in u]


# ----------------------------------------------------------------------------- aggregation


def borda_points(tiers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Borda points of one order: models strictly below + half the other members of the own tier."""
    n = sum(len(t) for t in tiers)
    points = {}
    above = 0
    for t in tiers:
        below = n - above - len(t)
        for m in t:
            points[m] = below + (len(t) - 1) / 2
        above += len(t)
    return points


def borda(orders: Sequence[Sequence[Sequence[str]]], models: Sequence[str]) -> tuple[Tiers, dict[str, float]]:
    """Aggregate several tier orders over `models` by Borda count; equal totals share a tier (in
    model order). Returns (tiers, total points)."""
    if not orders:
        raise ValueError("no orders to aggregate")
    total = {m: 0.0 for m in models}
    for tiers in orders:
        check_tiers(tiers, models)
        for m, p in borda_points(tiers).items():
            total[m] += p
    levels = sorted(set(total.values()), reverse=True)
    return [[m for m in models if total[m] == v] for v in levels], total


def kendall_agreement(
    orders: Mapping[str, Mapping[int, Sequence[Sequence[str]]]],
) -> dict:
    """Mean Kendall tau-b between annotators over the records both ranked.

    `orders[annotator][record] = tiers`. Returns ``{"mean_tau", "n_pairs", "n_undefined",
    "annotators", "shared_records"}`` (``mean_tau`` None when no pair is defined).
    """
    from scipy.stats import kendalltau  # lazy: scipy.stats takes seconds to import

    taus, undefined, shared = [], 0, set()
    names = sorted(orders)
    for a, b in combinations(names, 2):
        for rec in sorted(set(orders[a]) & set(orders[b])):
            ta, tb = orders[a][rec], orders[b][rec]
            pa, pb = tier_positions(ta), tier_positions(tb)
            if set(pa) != set(pb):
                continue
            shared.add(rec)
            ms = sorted(pa)
            tau = kendalltau([pa[m] for m in ms], [pb[m] for m in ms]).statistic
            if tau is None or math.isnan(tau):
                undefined += 1
            else:
                taus.append(float(tau))
    return {
        "mean_tau": sum(taus) / len(taus) if taus else None,
        "n_pairs": len(taus),
        "n_undefined": undefined,
        "annotators": len(names),
        "shared_records": len(shared),
    }


# ----------------------------------------------------------------------------- binary insertion


@dataclass(frozen=True)
class Question:
    """Compare `new` (being inserted) with `existing` (a member of tier `tier`); `step` answers so far."""

    new: str
    existing: str
    tier: int
    step: int


@dataclass(frozen=True)
class Insertion:
    """State after replaying answers: `tiers` (new models placed so far) and the next `question`."""

    tiers: Tiers
    question: Question | None
    answers_used: int

    @property
    def done(self) -> bool:
        return self.question is None


def binary_insertion(
    tiers: Sequence[Sequence[str]], new_models: Sequence[str], answers: Sequence[str]
) -> Insertion:
    """Insert `new_models` (in turn) into `tiers` by binary search, replaying `answers`.

    Each answer is ``"new"`` (the new image is better), ``"existing"`` (the existing one is
    better) or ``"tie"``. Returns the next question when the answers run out, or the final tiers
    (``question`` None). Raises `RankError` for an invalid answer, a new model already in `tiers`
    or answers left over once every model is placed.
    """
    work = [list(t) for t in tiers]
    present = [m for t in work for m in t]
    if len(set(present)) != len(present):
        raise RankError(f"tiers hold a model twice: {present}")
    if len(set(new_models)) != len(new_models) or set(new_models) & set(present):
        raise RankError(f"new models {list(new_models)} must be distinct and not in the order yet")
    k = 0
    for new in new_models:
        lo, hi = 0, len(work)
        placed = False
        while lo < hi:
            mid = (lo + hi) // 2
            if k == len(answers):
                return Insertion(work, Question(new, work[mid][0], mid, k), k)
            answer = answers[k]
            k += 1
            if answer == "new":
                hi = mid
            elif answer == "existing":
                lo = mid + 1
            elif answer == "tie":
                work[mid].append(new)
                placed = True
                break
            else:
                raise RankError(f"answer {answer!r} must be one of {', '.join(OUTCOMES)}")
        if not placed:
            work.insert(lo, [new])
    if k != len(answers):
        raise RankError(f"{len(answers) - k} answer(s) left over after every new model was placed")
    return Insertion(work, None, k)


def insert_with(
    tiers: Sequence[Sequence[str]], new_models: Sequence[str], compare: Callable[[str, str], str]
) -> tuple[Tiers, list[Question]]:
    """Run `binary_insertion` with an oracle ``compare(new, existing) -> "new" | "existing" | "tie"``.
    Returns (final tiers, the questions asked)."""
    answers: list[str] = []
    asked: list[Question] = []
    while True:
        state = binary_insertion(tiers, new_models, answers)
        if state.done:
            return state.tiers, asked
        q = state.question
        asked.append(q)
        answers.append(compare(q.new, q.existing))


def max_questions(n_tiers: int) -> int:
    """Most questions one new model can need against `n_tiers` tiers."""
    return math.ceil(math.log2(n_tiers + 1)) if n_tiers else 0
