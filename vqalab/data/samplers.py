"""Training batch order as a pure function of (seed, epoch), so a resumed run sees the same data."""

from __future__ import annotations

import torch


def epoch_batches(
    num_samples: int, batch_size: int, seed: int, epoch: int, groups: list[int] | None = None
) -> list[list[int]]:
    """Shuffled index batches for one epoch.

    With ``groups`` (e.g. the image id of each question) whole groups are shuffled and kept
    together, so a batch holds few distinct images and the image encoder runs once per image
    (the model de-duplicates by ``image_id``).
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if groups is None:
        order = torch.randperm(num_samples, generator=gen).tolist()
    else:
        members: dict[int, list[int]] = {}
        for index, key in enumerate(groups):
            members.setdefault(key, []).append(index)
        keys = list(members)
        order = [i for k in torch.randperm(len(keys), generator=gen).tolist() for i in members[keys[k]]]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
