"""RewardBench 2 rules: correctness, the listwise order, the Ties score's edge cases, and aggregation."""

import math

import pytest

from open_instruct.evaluation.reward_bench import (
    Example,
    listwise_order,
    official_credit,
    scores_correct,
    select,
    summarize,
    ties_score,
)


def test_chosen_must_score_strictly_higher_than_every_rejected():
    assert scores_correct([0.9, 0.1, 0.5, 0.8], 1)
    assert not scores_correct([0.9, 0.1, 0.9, 0.8], 1)  # a tie is not a win
    assert scores_correct([0.9, 0.7, 0.6], 2) and not scores_correct([0.9, 0.5, 0.6], 2)


def test_listwise_order_is_a_seeded_permutation_per_example():
    order = listwise_order(0, "f1", 4)
    assert sorted(order) == [0, 1, 2, 3]
    assert order == listwise_order(0, "f1", 4)  # the same on a resumed run
    orders = {tuple(listwise_order(seed, i, 4)) for seed in range(3) for i in ("a", "b", "c", "d")}
    assert len(orders) > 4  # varies with seed and example


def ties(id_, scores, num_chosen, status="correct"):
    return {
        "id": id_,
        "subset": "Ties",
        "scores": scores,
        "num_chosen": num_chosen,
        "status": status,
        "calls": [],
    }


def test_ties_score_by_hand():
    records = [
        ties("ref:7", [5, 1], 1),  # gap 4
        ties("tied:7", [5, 4, 2], 2),  # gap 2, spread 1
        ties("ref:8", [3, 3], 1),  # gap 0: not accurate
        ties("tied:8", [3, 3, 1], 2),  # gap 2, spread 0
        ties("ref:9", [1, 0], 1),  # no tied row: counts for accuracy only
        ties("ref:10", [2, 1], 1),  # gap 1
        ties("tied:10", [2, 2, 1], 2),  # gap 1, spread 0
    ]
    got = ties_score(records)
    assert got["prompts"] == 3 and got["ref_rows"] == 4 and got["tied_rows"] == 3
    assert got["ref_accuracy"] == 0.75 and got["tied_accuracy"] == 1.0
    assert got["correctness_preferred"] == 1.0  # tied gap above tied spread: 2 > 1, 2 > 0, 1 > 0
    assert got["correctness_preferred_hard"] == pytest.approx(
        2 / 3
    )  # min(4, 2) > 1; min(0, 2) > 0 fails; 1 > 0
    # tanh(min gap / spread - 1): prompt 7 tanh(1); prompt 8 0/0 counts 0; prompt 10 1/0 = inf, tanh 1
    margin = (math.tanh(1) + 0 + 1) / 3
    assert got["margin_score"] == pytest.approx(margin)
    assert got["score"] == pytest.approx(0.3 * 1 + 0.3 * 0.75 + 0.2 * 1 + 0.2 * 2 / 3 + 0.01 * margin)


def test_ties_score_needs_a_prompt_with_both_rows():
    assert ties_score([ties("ref:1", [2, 1], 1)])["score"] is None


def test_summarize_leaves_failed_examples_out():
    def rec(id_, subset, status):
        return {
            "id": id_,
            "subset": subset,
            "status": status,
            "num_chosen": 1,
            "calls": [
                {
                    "failed": status == "failed",
                    "judge_ok": status != "failed",
                    "parsed": status != "failed",
                    "order": [2, 0, 1, 3],
                    "picked": {"correct": 0, "wrong": 2}.get(status),
                }
            ],
        }

    records = [
        rec("a", "Math", "correct"),
        rec("b", "Math", "failed"),
        rec("c", "Focus", "failed"),
        rec("d", "Safety", "wrong"),
        rec("e", "Safety", "correct"),
    ]
    got = summarize("listwise", records)
    # Focus has nothing judged: no figure, and left out of the overall
    assert got["accuracy"] == {"overall": 0.75, "Math": 1.0, "Safety": 0.5, "Focus": None}
    assert got["n"] == 3 and got["failures"] == 2 and got["failed_calls"] == 2 and got["unparsed"] == 0
    # RewardBench 2's score counts every example; a failed one is "effectively a tie" among 4: 0.25
    assert got["official"] == {
        "overall": (0.625 + 0.25 + 0.5) / 3,
        "Math": 0.625,
        "Safety": 0.5,
        "Focus": 0.25,
    }


def scored(scores, parsed=None, num_chosen=1):
    parsed = parsed or [True] * len(scores)
    calls = [
        {"failed": s is None, "judge_ok": s is not None, "parsed": p}
        for s, p in zip(scores, parsed, strict=True)
    ]
    return {"scores": scores, "num_chosen": num_chosen, "calls": calls}


@pytest.mark.parametrize(
    "method, record, credit",
    [
        ("flip", scored([0.8, 0.5, 0.4, 0.1]), 1.0),  # chosen alone at the top
        ("flip", scored([0.8, 0.8, 0.4, 0.1]), 1 / 2),  # tied with one rejected at the top
        ("flip", scored([0.8, 0.8, 0.8, 0.8]), 1 / 4),  # all four equal
        ("flip", scored([0.5, 0.8, 0.8, 0.1]), 0.0),  # chosen below the top
        ("flip", scored([0.8, None, 0.4, 0.1]), 1 / 4),  # a failed call: no verdict
        ("pointwise", scored([9, 3, 9, 9]), 1 / 3),
        ("pointwise", scored([9, 3, 1, 1], parsed=[True, False, True, True]), 1 / 4),  # a rating unparsed
        ("flip", scored([0.9, 0.2, 0.2, 0.2], parsed=[False, True, True, True]), 1.0),  # raw F1 still ranks
    ],
)
def test_official_credit_of_score_methods_by_hand(method, record, credit):
    assert official_credit(method, record) == pytest.approx(credit)
    # today's accuracy gives no partial credit: only a strict win counts
    if None not in record["scores"] and all(c["parsed"] for c in record["calls"]):
        assert scores_correct(record["scores"], 1) == (credit == 1.0)


def test_official_credit_of_listwise_by_hand():
    def listwise(picked, parsed=True, failed=False):
        call = {"order": [3, 1, 0, 2], "picked": picked, "parsed": parsed, "failed": failed}
        return {"num_chosen": 1, "calls": [call]}

    assert official_credit("listwise", listwise(0)) == 1.0
    assert official_credit("listwise", listwise(2)) == 0.0
    assert official_credit("listwise", listwise(None, parsed=False)) == 0.25  # unparseable verdict
    assert official_credit("listwise", listwise(None, parsed=False, failed=True)) == 0.25


def test_summarize_reports_official_beside_accuracy_on_tied_rows():
    records = [
        {"id": str(i), "subset": "Focus", "status": status, **scored(scores)}
        for i, (status, scores) in enumerate(
            [
                ("correct", [0.9, 0.1, 0.1, 0.1]),
                ("wrong", [0.9, 0.9, 0.1, 0.1]),
                ("wrong", [0.1, 0.9, 0.1, 0.1]),
            ]
        )
    ]
    got = summarize("flip", records)
    assert got["accuracy"]["Focus"] == pytest.approx(1 / 3)
    assert got["official"]["Focus"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_select_limits_prompts_per_subset_and_keeps_ties_pairs():
    def ex(id_, subset):
        return Example(id_, "p", ("c",), ("r",), subset)

    examples = [
        ex("ref:1", "Ties"),
        ex("ref:2", "Ties"),
        ex("tied:1", "Ties"),
        ex("tied:2", "Ties"),
        ex("a", "Math"),
        ex("b", "Math"),
        ex("c", "Focus"),
    ]
    assert [e.id for e in select(examples, None, 1, "x")] == ["ref:1", "tied:1", "a", "c"]
    assert [e.id for e in select(examples, ["MATH"], None, "x")] == ["a", "b"]
