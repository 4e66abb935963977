"""The official VQA accuracy (Antol et al. 2015; the VQA v2 evaluation code) and its summaries.

For one question with 10 human answers, a predicted answer scores

    acc = mean over the 10 ways of leaving one annotator out of min(1, #matches among the other 9 / 3)

so an answer given by 0, 1, 2, 3, ≥4 annotators scores 0, 0.3, 0.6, 0.9, 1.0. Before matching, the
prediction and the human answers are normalised as the official code does: punctuation, number
words → digits, articles dropped, contractions restored (``normalize_answer``).

One detail of the official code (its current version) is followed on purpose: when all 10 human
answers are the same string, no normalisation is applied, neither to them nor to the prediction
(only line breaks and tabs become spaces and the ends are stripped). So for ten answers "yes",
"yes" scores 1.0 but "Yes" or "yes." score 0.

Map-view segmentation (lab note 004) is scored by IoU: predicted probabilities cut at a threshold
(0.50 in the lab note) against the occupancy mask, counted over the whole split (``iou_counts``).
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Sequence

import torch

# Full credit needs this many matching human answers.
MATCHES_FOR_FULL_CREDIT = 3

# --- The official normalisation tables (VQA evaluation code) ------------------------------------

# Number words the official code maps to digits.
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
# Punctuation removed or turned into a space (see ``process_punctuation``). No ' . : here.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")
# A comma between digits ("1,000") marks the whole answer as numeric: punctuation is then removed.
COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern. Its look-behind is mistyped ("(?!<=" is a look-ahead), so in effect it
# removes every period that is not followed by a digit: "2.5" keeps its point, "dog." loses it.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")

# Missing apostrophes restored, word by word (the official table, keys after lower-casing can
# never be the capitalised ones; they are kept as in the table).
_CONTRACTIONS = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't |
couldn'tve couldn't've | couldnt've couldn't've | didnt didn't | doesnt doesn't | dont don't |
hadnt hadn't | hadnt've hadn't've | hadn'tve hadn't've | hasnt hasn't | havent haven't | hed he'd |
hed've he'd've | he'dve he'd've | hes he's | howd how'd | howll how'll | hows how's | Id've I'd've |
I'dve I'd've | Im I'm | Ive I've | isnt isn't | itd it'd | itd've it'd've | it'dve it'd've |
itll it'll | let's let's | maam ma'am | mightnt mightn't | mightnt've mightn't've |
mightn'tve mightn't've | mightve might've | mustnt mustn't | mustve must've | neednt needn't |
notve not've | oclock o'clock | oughtnt oughtn't | ow's'at 'ow's'at | 'ows'at 'ow's'at |
'ow'sat 'ow's'at | shant shan't | shed've she'd've | she'dve she'd've | she's she's |
shouldve should've | shouldnt shouldn't | shouldnt've shouldn't've | shouldn'tve shouldn't've |
somebody'd somebodyd | somebodyd've somebody'd've | somebody'dve somebody'd've |
somebodyll somebody'll | somebodys somebody's | someoned someone'd | someoned've someone'd've |
someone'dve someone'd've | someonell someone'll | someones someone's | somethingd something'd |
somethingd've something'd've | something'dve something'd've | somethingll something'll |
thats that's | thered there'd | thered've there'd've | there'dve there'd've | therere there're |
theres there's | theyd they'd | theyd've they'd've | they'dve they'd've | theyll they'll |
theyre they're | theyve they've | twas 'twas | wasnt wasn't | wed've we'd've | we'dve we'd've |
weve we've | werent weren't | whatll what'll | whatre what're | whats what's | whatve what've |
whens when's | whered where'd | wheres where's | whereve where've | whod who'd | whod've who'd've |
who'dve who'd've | wholl who'll | whos who's | whove who've | whyll why'll | whyre why're |
whys why's | wont won't | wouldve would've | wouldnt wouldn't | wouldnt've wouldn't've |
wouldn'tve wouldn't've | yall y'all | yall'll y'all'll | y'allll y'all'll | yall'd've y'all'd've |
y'alld've y'all'd've | y'all'dve y'all'd've | youd you'd | youd've you'd've | you'dve you'd've |
youll you'll | youre you're | youve you've
"""
CONTRACTIONS = dict(pair.split() for pair in _CONTRACTIONS.replace("\n", " ").split("|"))


def clean_whitespace(text: str) -> str:
    """Line breaks and tabs → spaces, ends stripped (applied to every answer, always)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Each punctuation mark is deleted when it touches a space (or the answer has a comma between
    digits), else replaced by a space; then periods not followed by a digit are deleted."""
    out = text
    numeric = COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in PUNCTUATION:
        # The test looks at the original text, the replacement acts on the running result.
        if numeric or (p + " " in text) or (" " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out)


def process_digit_article(text: str) -> str:
    """Lower-case, number words → digits, articles dropped, contractions restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The official normalisation of one answer: ``"Two dogs!"`` → ``"2 dogs"``."""
    return process_digit_article(process_punctuation(clean_whitespace(answer)))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of ``prediction`` for one question with its human ``answers`` (10 in VQA).

    Normalisation is skipped when all answers are the same string (see the module docstring).
    Returns a value in [0, 1]: 0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, ≥4 matching answers out of 10.
    """
    if not answers:
        raise ValueError("vqa_accuracy: a question needs at least one human answer")
    human = [clean_whitespace(a) for a in answers]
    pred = clean_whitespace(prediction)
    if len(set(human)) > 1:
        human = [normalize_answer(a) for a in human]
        pred = normalize_answer(pred)
    return accuracy_of_matches(tuple(a == pred for a in human))


@functools.lru_cache(maxsize=4096)
def accuracy_of_matches(matched: tuple[bool, ...]) -> float:
    """The official accuracy given which human answers match the prediction (``matched[i]``:
    annotator i gave it). A function of this pattern alone, so loaders can reuse it for every
    question and candidate with the same pattern and get the same float."""
    matches = sum(matched)
    # Leaving out annotator i removes one match exactly when annotator i gave the prediction.
    per_subset = [min(1.0, (matches - m) / MATCHES_FOR_FULL_CREDIT) for m in matched]
    return sum(per_subset) / len(per_subset)


def vqa_summary(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                answer_types: Sequence[str] | None = None,
                question_types: Sequence[str] | None = None) -> dict:
    """Accuracy overall and per answer type (and per question type when given), in [0, 1].

    predictions: one predicted answer string per question.
    answers: the human answers of each question.
    answer_types / question_types: the annotation's ``answer_type`` ("yes/no", "number", "other")
    and ``question_type`` of each question.
    Returns ``{"overall": a, "count": n, "per_answer_type": {...}, "per_question_type": {...}}``.
    """
    if len(predictions) != len(answers):
        raise ValueError(f"vqa_summary: {len(predictions)} predictions for {len(answers)} questions")
    scores = [vqa_accuracy(p, a) for p, a in zip(predictions, answers)]
    summary: dict = {"overall": sum(scores) / len(scores) if scores else float("nan"), "count": len(scores)}
    for key, types in (("per_answer_type", answer_types), ("per_question_type", question_types)):
        if types is None:
            continue
        if len(types) != len(scores):
            raise ValueError(f"vqa_summary: {len(types)} {key[4:]}s for {len(scores)} questions")
        groups: dict[str, list[float]] = defaultdict(list)
        for kind, score in zip(types, scores):
            groups[kind].append(score)
        summary[key] = {kind: sum(s) / len(s) for kind, s in sorted(groups.items())}
    return summary


# --- Map-view segmentation: intersection over union -----------------------------------------------

IOU_THRESHOLD = 0.5  # lab note 004 reports IoU@0.50
IOU_SWEEP_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def iou_counts(probs: torch.Tensor, mask: torch.Tensor, threshold: float = IOU_THRESHOLD) -> tuple[int, int]:
    """(intersection, union) pixel counts of ``probs ≥ threshold`` against the binary ``mask``.

    Counts, not a ratio, so that a data set's IoU is Σ intersection / Σ union over all its
    batches (how map-view segmentation is scored), not a mean of per-batch ratios.
    """
    pred = probs >= threshold
    truth = mask > 0.5
    return int((pred & truth).sum()), int((pred | truth).sum())


def iou_of_counts(intersection: int, union: int) -> float:
    """IoU from ``iou_counts`` (summed over a split): Σ intersection / Σ union, and 1.0 when the
    union is empty. Nothing predicted where there is nothing to find is a perfect answer, and
    the training loop has always scored it so (``val_acc`` of recorded runs); NaN would drop such
    a split from a mean and ``max`` alike. Libraries differ here (segmentation_models_pytorch's
    ``iou_score`` defaults to 1.0, torchmetrics' ``JaccardIndex`` to 0, MONAI's ``MeanIoU``
    leaves the sample out): vqalab uses 1.0 everywhere."""
    return intersection / union if union else 1.0


def iou(probs: torch.Tensor, mask: torch.Tensor, threshold: float = IOU_THRESHOLD) -> float:
    """IoU of ``probs ≥ threshold`` against ``mask`` (1.0 when both are empty: ``iou_of_counts``)."""
    return iou_of_counts(*iou_counts(probs, mask, threshold))


def iou_sweep(probs: torch.Tensor, mask: torch.Tensor,
              thresholds: Sequence[float] = IOU_SWEEP_THRESHOLDS) -> dict[float, float]:
    """IoU at each threshold: how sensitive the score is to where the probabilities are cut."""
    return {float(t): iou(probs, mask, t) for t in thresholds}


def gqa_accuracy(predictions: Sequence[str], answers: Sequence[str],
                 structural_types: Sequence[str] | None = None) -> dict:
    """GQA accuracy (Hudson & Manning 2019; its evaluation script): exact match of the predicted
    answer string with the one answer, overall and per structural type (verify, query, choose,
    logical, compare) when given. Returns ``{"overall": a, "count": n, "per_structural_type": {...}}``
    with accuracies in [0, 1]."""
    if len(predictions) != len(answers):
        raise ValueError(f"gqa_accuracy: {len(predictions)} predictions for {len(answers)} questions")
    correct = [float(p == a) for p, a in zip(predictions, answers)]
    summary: dict = {"overall": sum(correct) / len(correct) if correct else float("nan"), "count": len(correct)}
    if structural_types is not None:
        if len(structural_types) != len(correct):
            raise ValueError(f"gqa_accuracy: {len(structural_types)} structural types for {len(correct)} questions")
        groups: dict[str, list[float]] = defaultdict(list)
        for kind, c in zip(structural_types, correct):
            groups[kind].append(c)
        summary["per_structural_type"] = {kind: sum(c) / len(c) for kind, c in sorted(groups.items())}
    return summary
