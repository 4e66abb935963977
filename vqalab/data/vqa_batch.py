"""The batch of every VQA data set whose items carry an image (or region features) and a question:
``easy_vqa``, ``vqa_v2``, ``gqa`` and ``synthetic_scenes`` over images or regions (their scene-graph
inputs batch with ``graphs.collate_graph_vqa``).

    image (B, 3, H, W) or (B, K, D) float   question (B, T) long   question_len (B,) long
    image_id (B,) long   target (B,) long   soft_target (B, A) float   boxes (B, K, 4) float
"""

from __future__ import annotations

import torch

from vqalab.text import pad_questions


def collate_vqa(items: list[dict]) -> dict:
    """Items of any VQA loader (image or region features) as one batch: questions padded to the
    longest (``question_len`` keeps the lengths); soft scores and region boxes when items carry them."""
    question, question_len = pad_questions([it["question"] for it in items])
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "question": question,
        "question_len": question_len,
        "image_id": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
        "target": torch.tensor([it["target"] for it in items], dtype=torch.long),
    }
    if "soft_target" in items[0]:
        batch["soft_target"] = torch.stack([it["soft_target"] for it in items])
    if "boxes" in items[0]:  # region data: (B, K, 4)
        batch["boxes"] = torch.stack([it["boxes"] for it in items])
    return batch
