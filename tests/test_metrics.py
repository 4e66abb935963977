"""The official VQA accuracy on hand-written cases and against a brute-force reimplementation."""

import itertools
import random

import pytest

from vqalab.metrics import normalize_answer, vqa_accuracy, vqa_summary


def brute_force_accuracy(prediction: str, answers: list[str]) -> float:
    """The definition spelled out: average over every 9-annotator subset of min(1, matches / 3)
    (answers already normalised, so no normalisation here)."""
    subsets = list(itertools.combinations(range(len(answers)), len(answers) - 1))
    return sum(min(1.0, sum(answers[i] == prediction for i in s) / 3) for s in subsets) / len(subsets)


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (9, 1.0)])
def test_zero_to_four_and_more_matching_answers(matches, expected):
    answers = ["dog"] * matches + ["cat"] * (10 - matches)
    assert vqa_accuracy("dog", answers) == pytest.approx(expected)


def test_three_matches_are_not_full_credit_because_of_the_leave_one_out_average():
    # Leaving out one of the 3 "dog" annotators (3 of 10 subsets) leaves 2 matches: 0.6667.
    assert vqa_accuracy("dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx((7 * 1.0 + 3 * 2 / 3) / 10)


@pytest.mark.parametrize("raw, normalised", [
    ("Two dogs!", "2 dogs"),              # number word, case, punctuation
    ("a Dog", "dog"),                     # article
    ("the red one", "red 1"),
    ("dont know", "don't know"),          # contraction restored
    ("isnt it", "isn't it"),
    ("1,000", "1000"),                    # comma between digits: punctuation removed, not spaced
    ("2.5", "2.5"),                       # decimal point kept
    ("dog.", "dog"),                      # other periods removed
    ("black/white", "black white"),       # punctuation between words becomes a space
    ("yes !", "yes"),                     # punctuation next to a space is removed
    ("  tennis\tracket\n", "tennis racket"),
])
def test_official_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_prediction_and_answers_are_normalised_before_matching():
    answers = ["2"] * 2 + ["two"] * 2 + ["Two!"] + ["3"] * 5
    assert vqa_accuracy("two", answers) == pytest.approx(1.0)  # all five mean "2"
    assert vqa_accuracy("The dog.", ["dog"] * 2 + ["a dog"] + ["cat"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("dont know", ["don't know"] * 4 + ["no"] * 6) == pytest.approx(1.0)


def test_identical_answers_skip_normalisation():
    # The official code normalises nothing when all 10 answers are the same string.
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # whitespace is always cleaned
    # One differing answer switches normalisation back on.
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0


def test_matches_a_brute_force_leave_one_out_on_random_cases():
    rng = random.Random(0)
    vocabulary = ["yes", "no", "2", "3", "red", "blue"]
    for _ in range(200):
        answers = [rng.choice(vocabulary) for _ in range(10)]
        prediction = rng.choice(vocabulary)
        assert vqa_accuracy(prediction, answers) == pytest.approx(brute_force_accuracy(prediction, answers))


def test_no_answers_is_an_error():
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("yes", [])


def test_summary_overall_and_per_type():
    predictions = ["yes", "2", "red", "no"]
    answers = [["yes"] * 10, ["2"] * 2 + ["3"] * 8, ["blue"] * 10, ["no"] * 3 + ["yes"] * 7]
    summary = vqa_summary(predictions, answers, answer_types=["yes/no", "number", "other", "yes/no"],
                          question_types=["is the", "how many", "what color", "is the"])
    scores = [1.0, 0.6, 0.0, 0.9]
    assert summary["overall"] == pytest.approx(sum(scores) / 4)
    assert summary["count"] == 4
    assert summary["per_answer_type"] == pytest.approx({"yes/no": 0.95, "number": 0.6, "other": 0.0})
    assert summary["per_question_type"]["is the"] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="3 predictions for 4 questions"):
        vqa_summary(predictions[:3], answers)


# --- IoU (map-view segmentation) -------------------------------------------------------------------

def test_iou_at_050_against_a_hand_count():
    import torch

    from vqalab.metrics import iou, iou_counts

    probs = torch.tensor([[0.9, 0.6, 0.2],
                          [0.5, 0.4, 0.1]])
    mask = torch.tensor([[1.0, 0.0, 1.0],
                         [1.0, 0.0, 0.0]])
    # ≥ 0.5 predicts (0,0), (0,1), (1,0); the mask holds (0,0), (0,2), (1,0).
    # Intersection {(0,0), (1,0)} = 2; union {(0,0), (0,1), (0,2), (1,0)} = 4.
    assert iou_counts(probs, mask) == (2, 4)
    assert iou(probs, mask) == 0.5


def test_iou_sweep_moves_with_the_threshold_as_counted_by_hand():
    import torch

    from vqalab.metrics import iou_sweep

    probs = torch.tensor([0.35, 0.45, 0.55, 0.65, 0.75])
    mask = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    # 0.3: all 5 predicted, 3 true → 3/5; 0.5: {0.55, 0.65, 0.75} → 2 / 4; 0.7: {0.75} → 0 / 4.
    assert iou_sweep(probs, mask, (0.3, 0.5, 0.7)) == {0.3: 0.6, 0.5: 0.5, 0.7: 0.0}


def test_an_empty_mask_predicted_empty_is_a_perfect_iou_and_anything_predicted_scores_zero():
    import torch

    from vqalab.metrics import iou, iou_counts, iou_of_counts, iou_sweep

    empty = torch.zeros(2, 4, 4)
    assert iou_counts(empty, empty) == (0, 0)
    assert iou(empty, empty) == 1.0  # nothing predicted, nothing to find
    assert iou_of_counts(0, 0) == 1.0 and iou_of_counts(3, 4) == 0.75
    one_pixel = empty.clone()
    one_pixel[0, 0, 0] = 0.9
    assert iou(one_pixel, empty) == 0.0  # a false positive on an empty mask
    assert iou_sweep(empty, empty, (0.3, 0.5)) == {0.3: 1.0, 0.5: 1.0}
