"""Question tokenizer and vocabulary (built from the training split only)."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import numpy as np
import torch

PAD, UNK = "<pad>", "<unk>"
PAD_INDEX, UNK_INDEX = 0, 1
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and numbers; punctuation dropped (``"What's it?"`` → ``["what's", "it"]``)."""
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Token ↔ index; index 0 is padding, 1 is unknown."""

    def __init__(self, tokens: list[str]):
        if tokens[:2] != [PAD, UNK]:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts, min_count: int = 1) -> Vocabulary:
        counts = Counter(tok for text in texts for tok in tokenize(text))
        # Sorted by count then token, so the same texts always give the same indices.
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls([PAD, UNK, *kept])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(tok, UNK_INDEX) for tok in tokenize(text)]
        return ids or [UNK_INDEX]  # an empty question still has one token to encode


def pad_questions(questions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) padded token ids and (B,) lengths."""
    lengths = np.fromiter((len(q) for q in questions), dtype=np.int64, count=len(questions))
    tokens = np.fromiter(itertools.chain.from_iterable(questions), dtype=np.int64, count=int(lengths.sum()))
    padded = np.full((len(questions), int(lengths.max())), PAD_INDEX, dtype=np.int64)
    # The mask's True cells, row by row, are the tokens in order: one copy, no loop per question.
    padded[np.arange(padded.shape[1]) < lengths[:, None]] = tokens
    return torch.from_numpy(padded), torch.from_numpy(lengths)
