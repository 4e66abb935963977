"""VQA v2 (Goyal et al. 2017) from its official files.

Layout under ``root`` (file and folder names are arguments; these are the official ones)::

    v2_OpenEnded_mscoco_train2014_questions.json   {"questions": [{image_id, question, question_id}, …]}
    v2_mscoco_train2014_annotations.json           {"annotations": [{question_id, image_id, answers:
                                                     [{answer, answer_id, …} × 10], multiple_choice_answer,
                                                     answer_type, question_type}, …]}
    train2014/COCO_train2014_000000000009.jpg …    COCO images (the trailing digits are the image id)
    … the same for val2014

In place of the image folders, folders of precomputed features may be given
(``train_features``/``val_features``): one file per image named like the image (trailing digits =
image id) with extension ``.npy`` or ``.pt``, holding a (D,) vector, a (D, h, w) map or (K, D)
region features, or ``.npz`` with bottom-up-attention region features and boxes
(``vqalab.data.regions``: each region becomes its D features followed by its box as fractions of
the image), the same shape for every image (batches are stacked). The model then skips its
image encoder (``image_dim`` is set from the files). When every file is ``.npz`` the batches also
carry the region ``boxes`` (B, K, 4), which BAN's counting module reads.

Answers: every human answer is normalised as the official metric does
(``vqalab.metrics.normalize_answer``); the answer vocabulary is the most frequent normalised
answers of the training split (``answer_top_k`` and/or ``answer_min_count``). Each question's
soft target over that vocabulary is the official accuracy of each answer, ``vqa_accuracy(answer,
human answers)`` (0, 0.3, 0.6, 0.9, 1 for 0, 1, 2, 3, ≥4 annotators), for ``train.loss: bce``;
``target`` (and ``.targets``) is the best-scoring answer, for ``train.loss: ce``. Questions with no
answer in the vocabulary cannot be answered right and are left out; ``info`` records how many.
Because their accuracy is 0 whatever the model predicts, the official accuracy over all
validation questions is ``val_acc × info["val_kept_fraction"]`` exactly.

At full size (443,757 + 214,354 questions, 6.6 million human answers) the loader keeps one copy
of each distinct string (``StringTable``), normalises each once (``AnswerScorer``) and holds the
splits as arrays, not one Python object per question. The prepared splits are stored under the
cache folder (``vqalab.data.prepared``), keyed by the JSON files' paths, sizes and dates, the
arguments and a digest of the preparing code: a second load of unchanged files reads them back
(``info["prepared_from_cache"]``); ``use_cache: false`` prepares the files every time. With
``.npy`` feature files, each split's features are also stored there as one memory-mapped array
(``feature_table``, ``info["feature_tables"]``): an epoch gathers a batch's rows instead of opening
a file per image.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import operator
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

import vqalab.data as data_package
import vqalab.text as text_module
from vqalab import metrics
from vqalab.data import (
    SUBSET_SEED,
    DataSplits,
    DataStatus,
    fixed_subset,
    prepared,
    register_dataset,
    register_status,
    short_hash,
)
from vqalab.data.feature_cache import FeatureCache, FeatureKey
from vqalab.data.prepared import (
    Coded,
    Ragged,
    StringTable,
    code_digest,
    file_fingerprint,
    load_entry,
    paused_gc,
    store_entry,
    strings_array,
    strings_of,
)
from vqalab.data.prepared import entry_path as prepared_entry_path
from vqalab.data.regions import REGION_INPUT_KEYS, boxes_of, check_finite, read_regions
from vqalab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, open_rgb
from vqalab.data.vqa_batch import collate_vqa
from vqalab.io import load_large_json, write_atomically
from vqalab.metrics import accuracy_of_matches, clean_whitespace, normalize_answer, vqa_accuracy
from vqalab.paths import cache_dir, resolve_data
from vqalab.registry import ConfigError, short_repr
from vqalab.text import Vocabulary

log = logging.getLogger(__name__)

# The image id is the number just before the extension: COCO_train2014_000000000009.jpg → 9.
IMAGE_FILE = re.compile(r"(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
FEATURE_FILE = re.compile(r"(\d+)\.(?:npy|pt|npz)$")


def read_official_json(path: Path, key: str, what: str) -> list[dict]:
    """The ``key`` list of an official JSON file; errors name the file."""
    if not path.is_file():
        raise ConfigError(f"vqa_v2: {what} file not found: {path}")
    try:
        content = load_large_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"vqa_v2: {path}: not valid JSON: {err}") from None
    if not isinstance(content, dict) or not isinstance(content.get(key), list):
        raise ConfigError(f"vqa_v2: {path}: expected a JSON object with a '{key}' list (the official {what} layout)")
    return content[key]


def index_files(folder: Path, pattern: re.Pattern, what: str) -> dict[int, Path]:
    """image id → file for every file in ``folder`` whose name matches ``pattern``."""
    if not folder.is_dir():
        raise ConfigError(f"vqa_v2: {what} folder not found: {folder}")
    files = {}
    for path in folder.iterdir():
        match = pattern.search(path.name)
        if match:
            files[int(match.group(1))] = path
    return files


# Keys every entry of the official files has; an entry without one is refused naming file and entry.
QUESTION_KEYS = ("question_id", "image_id", "question")
ANNOTATION_KEYS = ("question_id", "image_id", "answers")


def check_entries(entries: list, path: Path, what: str, keys: tuple[str, ...]) -> None:
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"vqa_v2: {path}: {what} entry {index} is a {type(entry).__name__}, expected an object")
        missing = [k for k in keys if k not in entry]
        if missing:
            ident = f" (question_id {entry['question_id']!r})" if "question_id" in entry else ""
            raise ConfigError(f"vqa_v2: {path}: {what} entry {index}{ident} has no {', '.join(repr(k) for k in missing)} "
                              f"(every entry needs {', '.join(keys)})")
        where = f"vqa_v2: {path}: {what} entry {index}"
        for key in ("question_id", "image_id"):
            if not isinstance(entry[key], int) or isinstance(entry[key], bool):
                raise ConfigError(f"{where}: {key} = {short_repr(entry[key])}: expected an integer")
        where += f" (question_id {entry['question_id']})"
        if what == "questions" and not isinstance(entry["question"], str):
            raise ConfigError(f"{where}: question = {short_repr(entry['question'])}: expected a string")
        if what == "annotations":
            if not (isinstance(entry["answers"], list)
                    and all(isinstance(a, dict) and "answer" in a for a in entry["answers"])):
                raise ConfigError(f"{where}: 'answers' must be a list of objects with an 'answer'")
            if not isinstance(entry.get("multiple_choice_answer", ""), str):
                raise ConfigError(f"{where}: multiple_choice_answer = {short_repr(entry['multiple_choice_answer'])}: "
                                  "expected a string")
            for a in entry["answers"]:
                if not isinstance(a["answer"], str):
                    raise ConfigError(f"{where}: answer = {short_repr(a['answer'])}: expected a string "
                                      '(the official files quote every answer, e.g. "2")')


@dataclass
class ListedSplit:
    """One split's questions joined with their annotations, in the questions file's order.

    Strings other than the question are codes into the shared ``StringTable``; ``answers`` row i:
    the codes of question i's human answers as given.
    """

    question_ids: np.ndarray  # (N,) int64
    image_ids: np.ndarray  # (N,) int64
    texts: list[str]
    answers: Ragged  # N rows of int32 codes
    multiple_choice: np.ndarray  # (N,) int32 codes
    answer_types: np.ndarray  # (N,) int32 codes
    question_types: np.ndarray  # (N,) int32 codes

    def take(self, rows: list[int]) -> ListedSplit:
        if len(rows) == len(self.texts):
            return self
        index = np.asarray(rows, dtype=np.int64)
        return ListedSplit(self.question_ids[index], self.image_ids[index], [self.texts[i] for i in rows],
                           self.answers.take(index), self.multiple_choice[index], self.answer_types[index],
                           self.question_types[index])


def all_of(kind: type, *columns: list) -> bool:
    """Every value of every column is exactly ``kind`` (``bool`` is no ``int`` here), as the official
    files have them: checked in one cheap pass, so the per-entry checks run only on a bad file."""
    return all(set(map(type, column)) <= {kind} for column in columns)  # map and set in C: 4× the genexpr


def first_difference(a: list, b: list) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def load_split(questions_path: Path, annotations_path: Path, strings: StringTable) -> ListedSplit:
    """Questions joined with their annotations, in the questions file's order.

    One pass per field over the parsed entries; no Python object is made per question or answer
    beyond what the JSON parser made.
    """
    questions = read_official_json(questions_path, "questions", "questions")
    annotations = read_official_json(annotations_path, "annotations", "annotations")
    get_answer = operator.itemgetter("answer")
    try:
        question_ids = [q["question_id"] for q in questions]
        image_ids = [q["image_id"] for q in questions]
        texts = [q["question"] for q in questions]
        annotated_ids = [a["question_id"] for a in annotations]
        if not (all_of(int, question_ids, image_ids, annotated_ids) and all_of(str, texts)):
            raise TypeError("an id or a question of the wrong type")  # named by check_entries below
        by_question = dict(zip(annotated_ids, annotations))
        joined = list(map(by_question.get, question_ids))
        if None in joined:
            question_id = question_ids[joined.index(None)]
            raise ConfigError(f"vqa_v2: {annotations_path}: no annotation for question_id {question_id} "
                              f"of {questions_path}")
        annotated_images = [a["image_id"] for a in joined]
        if not all_of(int, annotated_images):
            raise TypeError("an image_id of the wrong type")
        if annotated_images != image_ids:
            row = first_difference(annotated_images, image_ids)
            raise ConfigError(f"vqa_v2: question_id {question_ids[row]}: image_id {image_ids[row]} in {questions_path} "
                              f"but {annotated_images[row]} in {annotations_path}")
        given = [a["answers"] for a in joined]
        lengths = np.fromiter(map(len, given), dtype=np.int64, count=len(given))
        flat = [answer for answers in given for answer in map(get_answer, answers)]
        multiple_choice = [a.get("multiple_choice_answer", "") for a in joined]
        answer_types = [a.get("answer_type", "") for a in joined]
        question_types = [a.get("question_type", "") for a in joined]
        if not all_of(str, flat, multiple_choice):
            raise TypeError("an answer of the wrong type")
    except (KeyError, TypeError, AttributeError):
        # A malformed entry: say which one, as the checks name it.
        check_entries(questions, questions_path, "questions", QUESTION_KEYS)
        check_entries(annotations, annotations_path, "annotations", ANNOTATION_KEYS)
        raise ConfigError(f"vqa_v2: {questions_path} or {annotations_path}: an entry of the wrong shape "
                          "(expected the official files' keys and types)") from None
    try:
        ids = np.array(question_ids, dtype=np.int64), np.array(image_ids, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"vqa_v2: {questions_path}: question_id and image_id must be integers") from None
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ListedSplit(*ids, texts, Ragged(strings.codes_of(flat), offsets), strings.codes_of(multiple_choice),
                       strings.codes_of(answer_types), strings.codes_of(question_types))


def match_patterns(matched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of the (m, L) bool array and each row's number among them (``np.unique``
    by rows, through each row's bits as one integer: sorting integers is fast)."""
    if matched.shape[1] > 62:
        return np.unique(matched, axis=0, return_inverse=True)
    bits = matched.astype(np.int64) @ (np.int64(1) << np.arange(matched.shape[1], dtype=np.int64))
    _, first, inverse = np.unique(bits, return_index=True, return_inverse=True)
    return matched[first], inverse


class AnswerScorer:
    """Soft scores and best answers of whole splits, as ``soft_scores`` and ``best_answer`` give
    them question by question, with each distinct string normalised once.

    Strings are codes of one ``StringTable``, so "equal after normalisation" is an integer
    comparison: ``cleaned[c]`` / ``normalised[c]`` is the code of ``clean_whitespace`` /
    ``normalize_answer`` of string c. The accuracy of each pattern of matching annotators is
    ``metrics.accuracy_of_matches``, the function ``vqa_accuracy`` returns, so the floats are the same.
    """

    def __init__(self, strings: StringTable):
        self.strings = strings
        self.normalised_text: dict[str, str] = {}
        raw = len(strings.strings)  # the strings as given; normalising them adds more
        self.cleaned = np.array([strings.code(clean_whitespace(s)) for s in strings.strings[:raw]], dtype=np.int64)
        self.normalised = np.array([strings.code(self.normalize(s)) for s in strings.strings[:raw]], dtype=np.int64)
        self.answer_index: dict[str, int] = {}

    def normalize(self, text: str) -> str:
        out = self.normalised_text.get(text)
        if out is None:
            out = self.normalised_text[text] = normalize_answer(text)
        return out

    def answer_vocab(self, answer_codes: np.ndarray, top_k: int | None, min_count: int) -> list[str]:
        """``build_answer_vocab`` of the answers with these codes (counts summed per normalised string)."""
        counts = np.bincount(self.normalised[answer_codes], minlength=len(self.strings.strings))
        by_text = {self.strings.strings[c]: int(n) for c in np.flatnonzero(counts) for n in (counts[c],)}
        by_text.pop("", None)
        kept = sorted((a for a, c in by_text.items() if c >= min_count), key=lambda a: (-by_text[a], a))
        return kept[:top_k] if top_k is not None else kept

    def set_vocabulary(self, answers: list[str]) -> None:
        """Answer index of each code (-1: not an answer), and each answer's code as a prediction."""
        self.answer_index = {a: i for i, a in enumerate(answers)}
        codes = [self.strings.code(a) for a in answers]
        as_clean = [self.strings.code(clean_whitespace(a)) for a in answers]
        as_normalised = [self.strings.code(self.normalize(a)) for a in answers]
        size = len(self.strings.strings)
        self.index_of = np.full(size, -1, dtype=np.int64)
        self.index_of[codes] = np.arange(len(answers))
        # A prediction is compared cleaned (when the ten answers agree) or normalised.
        self.pred_clean = np.full(size, -1, dtype=np.int64)
        self.pred_clean[codes] = as_clean
        self.pred_normalised = np.full(size, -1, dtype=np.int64)
        self.pred_normalised[codes] = as_normalised

    def score(self, answers: Ragged, multiple_choice: np.ndarray) -> dict[str, np.ndarray]:
        """Per question with a vocabulary answer scoring > 0: its scores (CSR, indices increasing) and best answer.

        Returns ``kept`` (rows), ``score_index``, ``score_value``, ``score_offsets`` and ``targets``.
        """
        lengths = answers.lengths()
        rows_of, index_of, value_of = [], [], []
        for length in np.unique(lengths[lengths > 0]).tolist():
            rows = np.flatnonzero(lengths == length)
            given = answers.flat[answers.offsets[rows][:, None] + np.arange(length)]  # (n, L) codes as given
            cleaned, normalised = self.cleaned[given], self.normalised[given]
            varied = (cleaned != cleaned[:, :1]).any(axis=1)  # the metric normalises only then
            human = np.where(varied[:, None], normalised, cleaned)
            candidates = np.concatenate([normalised, cleaned], axis=1)  # (n, 2L): normalised and as given
            row, column = np.nonzero(self.index_of[candidates] >= 0)
            candidate = candidates[row, column]
            pred = np.where(varied[row], self.pred_normalised[candidate], self.pred_clean[candidate])
            matched = human[row] == pred[:, None]  # (m, L): which annotators gave the prediction
            patterns, inverse = match_patterns(matched)
            accuracy = np.array([accuracy_of_matches(tuple(p)) for p in patterns.tolist()], dtype=np.float64)
            rows_of.append(rows[row])
            index_of.append(self.index_of[candidate])
            value_of.append(accuracy[inverse.reshape(-1)])
        num_answers = max(len(self.answer_index), 1)
        row = np.concatenate(rows_of) if rows_of else np.zeros(0, np.int64)
        index = np.concatenate(index_of) if index_of else np.zeros(0, np.int64)
        value = np.concatenate(value_of) if value_of else np.zeros(0, np.float64)
        positive = value > 0
        row, index, value = row[positive], index[positive], value[positive]
        # One entry per (question, answer), sorted: a candidate met twice scores the same both times.
        _, first = np.unique(row * num_answers + index, return_index=True)
        row, index, value = row[first], index[first], value[first]
        kept, counts = np.unique(row, return_counts=True)
        offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # best_answer: the highest score; ties to the multiple-choice answer, then the lower index.
        preferred = self.index_of[self.normalised[multiple_choice]]
        order = np.lexsort((index, index != preferred[row], -value, row))
        targets = index[order[offsets[:-1]]]
        return {"kept": kept, "score_index": index, "score_value": value, "score_offsets": offsets, "targets": targets}


def build_answer_vocab(answer_lists: list[list[str]], top_k: int | None, min_count: int) -> list[str]:
    """Most frequent normalised answers, most frequent first (ties: alphabetical).

    answer_lists: the human answers of each training question. top_k: keep at most this many
    (None: no limit). min_count: keep answers given at least this many times. The empty answer
    (e.g. "the" normalised) is never kept.
    """
    counts = Counter(normalize_answer(a) for answers in answer_lists for a in answers)
    counts.pop("", None)
    kept = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return kept[:top_k] if top_k is not None else kept


def soft_scores(answers: list[str], answer_index: dict[str, int]) -> dict[int, float]:
    """{answer index: official VQA accuracy of predicting that answer} for the answers scoring > 0.

    The candidates are the human answers normalised and as given (the metric leaves them as
    given when all 10 agree), restricted to the vocabulary.
    """
    candidates = {normalize_answer(a) for a in answers} | {clean_whitespace(a) for a in answers}
    scores = {}
    for answer in candidates:
        if answer in answer_index:
            score = vqa_accuracy(answer, answers)
            if score > 0:
                scores[answer_index[answer]] = score
    return scores


def best_answer(scores: dict[int, float], preferred: int | None) -> int:
    """Index of the highest score; ties go to ``preferred`` (the annotation's multiple-choice
    answer), then to the more frequent answer (lower index)."""
    return max(scores, key=lambda i: (scores[i], i == preferred, -i))


# .npy header bytes → (dtype, shape, Fortran order): the feature files of a set share one layout,
# and parsing each file's header (a Python literal) costs more than reading its 2 KB of data.
NPY_LAYOUTS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def read_npy(path: Path) -> np.ndarray:
    """``np.load`` of a small .npy file (no pickles), its header parsed once per distinct header."""
    raw = bytearray(path.read_bytes())  # writable, so torch can share the array's memory
    if raw[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file")
    header_end = 10 + int.from_bytes(raw[8:10], "little") if raw[6] == 1 else 12 + int.from_bytes(raw[8:12], "little")
    header = bytes(raw[:header_end])
    layout = NPY_LAYOUTS.get(header)
    if layout is None:
        if raw[6] not in (1, 2):  # format 3.0 (utf-8 field names): numpy's own reader
            return np.load(path)
        header_file = io.BytesIO(header)  # parsed from the bytes already read, not the file again
        np.lib.format.read_magic(header_file)
        read_header = np.lib.format.read_array_header_1_0 if raw[6] == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(header_file)
        if dtype.hasobject:
            raise ValueError(f"{path}: holds Python objects (dtype {dtype}); expected numbers")
        layout = NPY_LAYOUTS[header] = (dtype, shape, fortran_order)
    dtype, shape, fortran_order = layout
    count = int(np.prod(shape))
    if len(raw) - header_end != count * dtype.itemsize:
        raise ValueError(f"{path}: {len(raw) - header_end} data bytes, expected {count * dtype.itemsize} for {shape} {dtype}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header_end).reshape(shape, order="F" if fortran_order else "C")


def load_features(path: Path) -> torch.Tensor:
    """A feature file as a (D, h, w) float tensor: (D,) → (D, 1, 1); (K, D) regions → (D, K, 1);
    ``.npz`` regions with boxes → (D + 4, K, 1)."""
    if path.suffix == ".npz":
        array = read_regions(path)
    else:
        array = read_npy(path) if path.suffix == ".npy" else torch.load(path, map_location="cpu", weights_only=True)
    features = torch.as_tensor(array, dtype=torch.float32)
    check_finite(path, features.numpy())
    return torch.from_numpy(feature_map(features.numpy(), path))


def feature_map(array: np.ndarray, path: Path) -> np.ndarray:
    """A file's features as (D, h, w): (D,) → (D, 1, 1); (K, D) → (D, K, 1); (D, h, w) as stored."""
    if array.ndim == 1:
        return array[:, None, None]
    if array.ndim == 2:
        return np.ascontiguousarray(array.T[:, :, None])
    if array.ndim == 3:
        return array
    raise ValueError(f"{path}: expected features of shape (D,), (K, D) or (D, h, w), got {tuple(array.shape)}")


def feature_maps(stack: np.ndarray) -> np.ndarray:
    """``feature_map`` of n arrays of one shape, stacked as (n, ...): (n, D, h, w)."""
    if stack.ndim == 2:
        return stack[:, :, None, None]
    if stack.ndim == 3:
        return stack.transpose(0, 2, 1)[..., None]
    return stack


# Part of the feature table's cache key: bump when what ``fill_feature_table`` stores changes.
FEATURE_TABLE_VERSION = 1


def feature_table(split: VQAv2Split, name: str, cache: FeatureCache) -> tuple[np.ndarray, dict[int, int]] | None:
    """The split's ``.npy`` feature files as one memory-mapped (images, D, h, w) float32 array in
    the feature cache, and the row of each image id; None when the files differ in layout.

    An epoch then gathers a batch's features in one indexing of the array instead of opening a
    file per image (at VQA v2's size, 82,783 files, that reading took more time than the model
    step). The key holds every used file's path, size and modification time
    (``image_fingerprint``): a changed file rebuilds the table; a table that fails to load is rebuilt.
    """
    ids = np.unique(split.image_ids).astype(np.int64)
    paths = [split.files[image_id] for image_id in ids.tolist()]
    if not all(path.suffix == ".npy" for path in paths):
        return None
    values = read_npy(paths[0])
    size = paths[0].stat().st_size
    header = paths[0].open("rb").read(size - values.nbytes)
    if header not in NPY_LAYOUTS:  # a layout ``read_npy`` leaves to numpy (format 3.0)
        return None
    first = feature_map(values, paths[0])
    key = FeatureKey(encoder="feature files", weights="", image_set=f"vqa_v2 {name}, files sha256 {split.image_fingerprint()}",
                     image_size=tuple(first.shape[1:]), transform=f"as stored, (D, h, w) = {first.shape}, "
                     f"table version {FEATURE_TABLE_VERSION}")
    stored = cache.load(key)
    if stored is None:
        try:
            cache.store(key, ids, first.shape, lambda table: fill_feature_table(table, paths, header, size))
        except FeatureLayoutDiffers as err:
            log.info("vqa_v2 %s: %s: its features are read file by file", name, err)
            return None
        stored = cache.load(key)
        if stored is None:
            raise RuntimeError(f"feature table {cache.folder(key)} could not be read back")
    stored_ids, table = stored
    return table, {image_id: row for row, image_id in enumerate(stored_ids.tolist())}


class FeatureLayoutDiffers(ValueError):
    """A feature file whose header (dtype, shape) is not the first file's."""


def fill_feature_table(table: np.ndarray, paths: list[Path], header: bytes, size: int, chunk: int = 4096) -> None:
    """Copy each file's values into its row: files that share the first file's header are read
    as raw bytes (one ``read`` each, no header parsing) and copied ``chunk`` rows at a time; the
    values are checked finite at the end."""
    dtype, shape, fortran_order = NPY_LAYOUTS[header]
    for start in range(0, len(paths), chunk):
        payloads = []
        for path in paths[start:start + chunk]:
            fd = os.open(path, os.O_RDONLY)  # no file object per file: 123,287 of them at full size
            try:
                raw = os.read(fd, size + 1)
            finally:
                os.close(fd)
            if len(raw) != size or not raw.startswith(header):
                raise FeatureLayoutDiffers(f"{path} is not laid out as {paths[0]} ({shape} {dtype})")
            payloads.append(raw[len(header):])
        flat = np.frombuffer(b"".join(payloads), dtype=dtype)
        if fortran_order:  # each file's values in C order of the reversed shape, so transpose them back
            stack = flat.reshape(len(payloads), *shape[::-1]).transpose(0, *range(len(shape), 0, -1))
        else:
            stack = flat.reshape(len(payloads), *shape)
        table[start:start + len(payloads)] = feature_maps(stack)
    finite = np.isfinite(table).reshape(len(table), -1).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        check_finite(paths[bad], read_npy(paths[bad]))  # the index as the file holds its values


# The arrays of one prepared split (``prepare_split``), by name; all but the last two cover the
# kept questions only. ``listed_*``: every question of the (sub)set, for the image-file check.
SPLIT_ARRAYS = ("question_ids", "image_ids", "tokens", "token_offsets", "answer_codes", "answer_offsets",
                "answer_types", "question_types", "score_index", "score_value", "score_offsets", "targets",
                "listed_question_ids", "listed_image_ids")


def prepare_split(listed: ListedSplit, scorer: AnswerScorer, vocab: Vocabulary,
                  max_question_len: int | None) -> dict[str, np.ndarray]:
    """Soft scores, best answers and token ids of the questions with a vocabulary answer scoring > 0."""
    scored = scorer.score(listed.answers, listed.multiple_choice)
    kept = scored.pop("kept")
    encoded: dict[str, list[int]] = {}  # question text → token ids (questions repeat too)
    token_rows = []
    for row in kept.tolist():
        text = listed.texts[row]
        ids = encoded.get(text)
        if ids is None:
            ids = encoded[text] = vocab.encode(text)[:max_question_len]
        token_rows.append(ids)
    tokens = Ragged.from_lists(token_rows)
    answers = listed.answers.take(kept)
    return {
        "question_ids": listed.question_ids[kept], "image_ids": listed.image_ids[kept],
        "tokens": tokens.flat, "token_offsets": tokens.offsets,
        "answer_codes": answers.flat, "answer_offsets": answers.offsets,
        "answer_types": listed.answer_types[kept], "question_types": listed.question_types[kept],
        **scored, "listed_question_ids": listed.question_ids, "listed_image_ids": listed.image_ids,
    }


class VQAv2Split(Dataset):
    """One split. Items: image (3, S, S) normalised, or features (D, h, w); question token ids;
    image_id; target (best answer index); soft_target (num_answers,) official accuracies.

    Also kept per question, in item order: ``targets``, ``image_ids``, ``question_ids``,
    ``questions`` (token ids), ``answers`` (the human answers as given), ``answer_types``,
    ``question_types``; ``scores_of(i)`` is question i's {answer index: accuracy}. The ragged
    lists are arrays (``prepared.Ragged``, ``prepared.Coded``): a full-size split holds no Python
    object per question and answer.
    """

    def __init__(self, *, arrays: dict[str, np.ndarray], strings: list[str], num_answers: int,
                 files: dict[int, Path], image_size: int | None):
        self.arrays = arrays
        self.questions = Ragged(arrays["tokens"], arrays["token_offsets"])
        self.score_index = Ragged(arrays["score_index"], arrays["score_offsets"])
        self.score_value = Ragged(arrays["score_value"], arrays["score_offsets"])
        self.answers = Ragged(arrays["answer_codes"], arrays["answer_offsets"], table=strings)
        self.answer_types = Coded(arrays["answer_types"], strings)
        self.question_types = Coded(arrays["question_types"], strings)
        self.targets = arrays["targets"].tolist()
        self.image_ids = arrays["image_ids"].tolist()
        self.question_ids = arrays["question_ids"].tolist()
        self.num_answers = num_answers
        self.files = files
        self.image_size = image_size  # None: the files hold precomputed features
        self.with_boxes = all(path.suffix == ".npz" for path in files.values())  # region files with boxes
        self.table: np.ndarray | None = None  # the feature files as one array (``feature_table``)
        self.table_row: dict[int, int] = {}
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        # Read by the feature cache: what was done to the pixels.
        self.transform_key = f"resize {image_size}x{image_size} bilinear, ImageNet mean/std {IMAGENET_MEAN}/{IMAGENET_STD}"

    def __len__(self) -> int:
        return len(self.targets)

    def scores_of(self, index: int) -> dict[int, float]:
        start, end = self.arrays["score_offsets"][index:index + 2]
        return dict(zip(self.arrays["score_index"][start:end].tolist(), self.arrays["score_value"][start:end].tolist()))

    def load_image(self, image_id: int) -> torch.Tensor:
        path = self.files[image_id]
        if self.table is not None:
            return torch.from_numpy(np.array(self.table[self.table_row[image_id]]))
        if self.image_size is None:
            return load_features(path)
        try:
            with open_rgb(path, f"image_id {image_id}") as img:
                rgb = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        except ConfigError as err:
            raise ConfigError(f"vqa_v2: {err}") from None
        image = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float().div_(255)  # (3, S, S)
        return (image - self.mean) / self.std

    def soft_targets(self, indices: list[int]) -> torch.Tensor:
        """(B, num_answers) float32 official accuracies of the given questions, in one scatter
        (a full-size epoch builds half a million of them: no Python work per question)."""
        rows = np.asarray(indices, dtype=np.int64)
        answer_index, accuracy = self.score_index.take(rows), self.score_value.take(rows)
        batch_row = np.repeat(np.arange(len(rows)), np.diff(answer_index.offsets))
        soft = torch.zeros(len(rows), self.num_answers)
        soft[torch.from_numpy(batch_row), torch.from_numpy(answer_index.flat.astype(np.int64))] = \
            torch.from_numpy(accuracy.flat).float()
        return soft

    def item_without_image(self, index: int) -> dict:
        return self.items_without_image([index])[0]

    def items_without_image(self, indices: list[int]) -> list[dict]:
        soft = self.soft_targets(indices)
        return [{"question": self.questions[index], "image_id": self.image_ids[index], "target": self.targets[index],
                 "soft_target": soft[row]} for row, index in enumerate(indices)]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """The items of a batch, each distinct image read once: batches grouped by image
        (``group_by_image``) hold about five questions per image."""
        items = self.items_without_image(indices)
        if self.table is not None:  # one gather; fancy indexing copies the rows out of the memory map
            rows = [self.table_row[item["image_id"]] for item in items]
            for item, features in zip(items, torch.from_numpy(self.table[rows])):
                item["image"] = features
            return items
        images: dict[int, torch.Tensor] = {}
        for item in items:
            image_id = item["image_id"]
            if image_id not in images:
                images[image_id] = self.load_image(image_id)
            item["image"] = images[image_id]
            if self.with_boxes:
                item["boxes"] = boxes_of(item["image"])
        return items

    def image_fingerprint(self) -> str:
        """Hash of the image files used (path, size, modification time): changes when an image does.

        One ``os.stat`` per file and one hash update: at full size (123,287 files) the per-file
        ``Path`` objects and hash updates took longer than the stat calls."""
        folders: dict[Path, str] = {}  # each folder resolved once: a resolve per file took seconds at full size
        parts = []
        for image_id in np.unique(self.image_ids).tolist():
            path = self.files[image_id]
            folder = folders.get(path.parent) or folders.setdefault(path.parent, str(path.parent.resolve()))
            stat = os.stat(path)
            parts.append(f"{image_id}:{folder}/{path.name}:{stat.st_size}:{stat.st_mtime_ns};")
        return hashlib.sha256("".join(parts).encode()).hexdigest()


def check_image_files(question_ids: np.ndarray, image_ids: np.ndarray, files: dict[int, Path], folder: Path,
                      use_features: bool) -> None:
    """Every listed question's image has a file; else name the first question without one."""
    present = np.fromiter(files, dtype=np.int64, count=len(files))
    missing = ~np.isin(image_ids, present)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        image_id, question_id = int(image_ids[row]), int(question_ids[row])
        expected = f"a file ending in {image_id:012d}.npy/.pt/.npz" if use_features else \
            f"COCO_{folder.name}_{image_id:012d}.jpg"
        raise ConfigError(f"vqa_v2: image_id {image_id} (question_id {question_id}) has no "
                          f"{'feature file' if use_features else 'image'} in {folder} (expected {expected})")


# What the prepared arrays depend on besides the files and the arguments: this code. Bump the
# version for a change of meaning the source digest would not show (e.g. a data file it reads).
PREPARED_VERSION = 1


def preparing_code() -> str:
    """Digest of the modules that turn the official files into the prepared arrays."""
    return code_digest(__file__, metrics.__file__, text_module.__file__, data_package.__file__, prepared.__file__)


def prepared_key(json_paths: list[Path], arguments: dict) -> dict:
    return {"dataset": "vqa_v2", "version": PREPARED_VERSION, "code": preparing_code(),
            "files": file_fingerprint(json_paths), "arguments": arguments}


@register_dataset
def vqa_v2(
    *,
    root: str = "vqa_v2",
    train_questions: str = "v2_OpenEnded_mscoco_train2014_questions.json",
    train_annotations: str = "v2_mscoco_train2014_annotations.json",
    train_images: str = "train2014",
    val_questions: str = "v2_OpenEnded_mscoco_val2014_questions.json",
    val_annotations: str = "v2_mscoco_val2014_annotations.json",
    val_images: str = "val2014",
    train_features: str | None = None,
    val_features: str | None = None,
    image_size: int = 224,
    answer_top_k: int | None = 3000,
    answer_min_count: int = 1,
    max_question_len: int | None = None,
    max_train_samples: int | None = None,
    max_val_samples: int | None = None,
    group_by_image: bool = True,
    use_cache: bool = True,
) -> DataSplits:
    """VQA v2 from the official questions/annotations JSON files and COCO images (or feature files).

    root: folder holding the files below (relative paths: from the data root, ``$VQALAB_DATA`` or data/).
    train_questions / train_annotations / val_questions / val_annotations: JSON files under root.
    train_images / val_images: COCO image folders under root (COCO_<split>2014_<12-digit id>.jpg).
    train_features / val_features: folders of precomputed per-image feature files under root, used
        instead of the images (give both or neither).
    image_size: images are resized to image_size × image_size (ignored with features).
    answer_top_k: keep the K most frequent normalised training answers (None: no limit).
    answer_min_count: keep answers given at least this many times in the training split.
    max_question_len: truncate questions to this many tokens (None: keep all; lab note 001 used 12).
    max_train_samples / max_val_samples: use a fixed random subset of questions (None: all).
    group_by_image: batch the questions of one image together so the encoder runs once per image.
    use_cache: keep the prepared splits under the cache folder (``vqalab.data.prepared``) and reuse
        them while the JSON files and the preparing code are unchanged; with ``.npy`` feature files,
        also keep each split's features as one array there (``feature_table``), read per batch.
    """
    with paused_gc():
        return build_vqa_v2(**locals())


def build_vqa_v2(*, root, train_questions, train_annotations, train_images, val_questions, val_annotations,
                 val_images, train_features, val_features, image_size, answer_top_k, answer_min_count,
                 max_question_len, max_train_samples, max_val_samples, group_by_image, use_cache) -> DataSplits:
    """``vqa_v2`` (see there), run with the garbage collector paused."""
    base = resolve_data(root)
    if (train_features is None) != (val_features is None):
        raise ConfigError(f"vqa_v2: train_features = {train_features!r}, val_features = {val_features!r}: give both or neither")
    for key, value in (("image_size", image_size), ("answer_min_count", answer_min_count),
                       ("answer_top_k", answer_top_k), ("max_question_len", max_question_len)):
        if value is not None and value < 1:
            raise ConfigError(f"vqa_v2: {key} = {value}: expected at least 1")
    use_features = train_features is not None
    sources = {
        "train": (base / train_questions, base / train_annotations, base / (train_features or train_images),
                  max_train_samples),
        "val": (base / val_questions, base / val_annotations, base / (val_features or val_images), max_val_samples),
    }
    arguments = {"answer_top_k": answer_top_k, "answer_min_count": answer_min_count,
                 "max_question_len": max_question_len, "max_train_samples": max_train_samples,
                 "max_val_samples": max_val_samples, "subset_seed": SUBSET_SEED}
    json_paths = [path for q_path, a_path, _, _ in sources.values() for path in (q_path, a_path)]
    entry, key, stored = None, None, None
    if use_cache and all(path.is_file() for path in json_paths):
        entry = prepared_entry_path("vqa_v2", [str(base), [p.name for p in json_paths], arguments])
        key = prepared_key(json_paths, arguments)
        stored = load_entry(entry, key)

    files, listed = {}, {}
    strings = StringTable(strings_of(stored["strings"]) if stored is not None else None)
    for split, (q_path, a_path, folder, limit) in sources.items():
        if stored is None:
            listed[split] = load_split(q_path, a_path, strings)
            listed[split] = listed[split].take(fixed_subset(len(listed[split].texts), limit))
            listed_ids = listed[split].question_ids, listed[split].image_ids
        else:
            listed_ids = stored[f"{split}/listed_question_ids"], stored[f"{split}/listed_image_ids"]
        files[split] = index_files(folder, FEATURE_FILE if use_features else IMAGE_FILE,
                                   "feature" if use_features else "image")
        check_image_files(*listed_ids, files[split], folder, use_features)

    if stored is not None:
        answers, vocab = strings_of(stored["answer_vocab"]), Vocabulary(strings_of(stored["question_vocab"]))
        arrays = {split: {name: stored[f"{split}/{name}"] for name in SPLIT_ARRAYS} for split in sources}
        dropped = {split: int(stored[f"{split}/dropped"]) for split in sources}
    else:
        scorer = AnswerScorer(strings)
        answers = scorer.answer_vocab(listed["train"].answers.flat, answer_top_k, answer_min_count)
        if not answers:
            raise ConfigError(f"vqa_v2: no training answer is given {answer_min_count} or more times: lower answer_min_count")
        scorer.set_vocabulary(answers)
        vocab = Vocabulary.build(listed["train"].texts)
        arrays = {split: prepare_split(listed[split], scorer, vocab, max_question_len) for split in sources}
        dropped = {split: len(listed[split].texts) - len(arrays[split]["targets"]) for split in sources}
        del listed  # the per-question Python lists: only the arrays are kept
        if entry is not None:
            payload = {f"{split}/{name}": a for split, split_arrays in arrays.items() for name, a in split_arrays.items()}
            payload.update({f"{split}/dropped": np.array(n) for split, n in dropped.items()})
            payload.update(strings=strings_array(strings.strings), answer_vocab=strings_array(answers),
                           question_vocab=strings_array(vocab.tokens))
            store_entry(entry, key, payload)

    train, val = (VQAv2Split(arrays=arrays[split], strings=strings.strings, num_answers=len(answers),
                             files=files[split], image_size=None if use_features else image_size)
                  for split in ("train", "val"))
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"vqa_v2: no {'training' if len(train) == 0 else 'validation'} question has an answer in "
                          f"the vocabulary of {len(answers)} answers: raise answer_top_k or lower answer_min_count")
    tables = {}
    if use_features and use_cache:
        cache = FeatureCache()
        for name, split in (("train", train), ("val", val)):
            tables[name] = feature_table(split, name, cache)
            if tables[name] is not None:
                split.table, split.table_row = tables[name]
    model_kwargs = {"vocab_size": len(vocab), "num_answers": len(answers)}
    if use_features:
        model_kwargs["image_dim"] = int(val.load_image(val.image_ids[0]).shape[0])
    log.info("vqa_v2: %d train / %d val questions, %d answers, %d question tokens%s",
             len(train), len(val), len(answers), len(vocab), " (prepared data from the cache)" if stored is not None else "")
    return DataSplits(
        train=train, val=val, collate=collate_vqa,
        input_keys=REGION_INPUT_KEYS if train.with_boxes and val.with_boxes else
        ("image", "question", "question_len", "image_id"),
        model_kwargs=model_kwargs, class_names=answers,
        train_groups=train.image_ids if group_by_image else None,
        vocab=vocab.tokens,
        info={"dataset": "vqa_v2", "root": str(base), "train_questions": len(train), "val_questions": len(val),
              "train_dropped_no_vocab_answer": dropped["train"], "val_dropped_no_vocab_answer": dropped["val"],
              "val_kept_fraction": len(val) / (len(val) + dropped["val"]), "num_answers": len(answers),
              "image_size": None if use_features else image_size, "features": use_features,
              "prepared_from_cache": stored is not None,
              "feature_tables": {name: table is not None for name, table in tables.items()}},
    )


STATUS_CACHE_VERSION = 1  # bump when the counts below change meaning


def count_split(questions_path: Path, annotations_path: Path) -> tuple[int, set[str]]:
    """(questions, the distinct normalised answers) of one split's official files."""
    questions = read_official_json(questions_path, "questions", "questions")
    annotations = read_official_json(annotations_path, "annotations", "annotations")
    given = {a["answer"] for ann in annotations for a in ann["answers"]}  # each distinct string normalised once
    return len(questions), {normalize_answer(a) for a in given}


@register_status("vqa_v2", family="vqa", targets="soft")
def vqa_v2_status(spec: dict) -> DataStatus:
    """Found when the four JSON files and both image (or feature) folders are there.

    The fingerprint covers the JSON files' sizes and dates and each folder's file count and date
    (cheap for 120k images); the counts, which need the JSON parsed, are cached under that key.
    """
    base = resolve_data(spec["root"])
    use_features = spec["train_features"] is not None
    folders = [spec["train_features"], spec["val_features"]] if use_features else [spec["train_images"], spec["val_images"]]
    json_files = [spec["train_questions"], spec["train_annotations"], spec["val_questions"], spec["val_annotations"]]
    missing = [name for name in json_files if not (base / name).is_file()] + \
              [f"{name}/" for name in folders if not (base / name).is_dir()]
    if missing:
        what = "feature files named like the images (…000000000009.npy)" if use_features else \
            "COCO images (COCO_train2014_000000000009.jpg …)"
        return DataStatus(name="vqa_v2", found=False, where=str(base),
                          expected=f"missing {', '.join(missing)} (the official VQA v2 question and annotation "
                                   f"JSON files; {what} in {' and '.join(f + '/' for f in folders)})")
    file_stats = [(name, (base / name).stat().st_size, (base / name).stat().st_mtime_ns) for name in json_files]
    pattern = FEATURE_FILE if use_features else IMAGE_FILE
    images = {name: sum(1 for file_name in os.listdir(base / name) if pattern.search(file_name))  # names only: no Path per file
              for name in folders}
    folder_stats = [(name, images[name], (base / name).stat().st_mtime_ns) for name in folders]
    fingerprint = short_hash([file_stats, folder_stats])
    cached = cache_dir() / "data_status" / f"vqa_v2-{STATUS_CACHE_VERSION}-{fingerprint}.json"
    if cached.is_file():
        counts = json.loads(cached.read_text())
    else:
        train_questions, train_answers = count_split(base / json_files[0], base / json_files[1])
        val_questions, _ = count_split(base / json_files[2], base / json_files[3])
        counts = {"train_questions": train_questions, "val_questions": val_questions,
                  "train_images": images[folders[0]], "val_images": images[folders[1]],
                  "answers": len(train_answers - {""})}  # distinct normalised training answers
        write_atomically(cached, lambda f: f.write(json.dumps(counts).encode()))  # a reader never sees half a file
    return DataStatus(name="vqa_v2", found=True, where=str(base), counts=counts, fingerprint=fingerprint,
                      detail="feature files" if use_features else "images")
