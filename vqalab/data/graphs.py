"""Scene graphs as model inputs, shared by the scene-graph data sets (``synthetic_scenes``, ``gqa``).

A scene graph is a list of objects (nodes) with a name, attributes and a box, and directed,
labelled relations between them (edges ``(src, dst, label)``: "src is <label> dst"). Names,
attributes and relation labels are encoded with the same vocabulary as the question words, each
label as one whole entry (``"tennis racket"`` is one token; ``"red"`` is the question word "red"),
so a model can match question words with node labels through one embedding.

A batch of graphs (``collate_graph_vqa``) holds, padded to the largest graph of the batch:

    node_names (B, N) long   node_attrs (B, N, A) long (0: padding)   node_boxes (B, N, 4) float
    node_mask (B, N) bool    edges (B, E, 3) long [src, dst, label]   edge_mask (B, E) bool

Boxes are (x1, y1, x2, y2) as fractions of the image width and height.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from vqalab.text import PAD, UNK, Vocabulary, pad_questions

GRAPH_INPUT_KEYS = ("question", "question_len", "node_names", "node_attrs", "node_boxes", "node_mask",
                    "edges", "edge_mask")


def vocabulary_with_labels(questions: Iterable[str], labels: Iterable[str]) -> Vocabulary:
    """Question words (``Vocabulary.build`` order) followed by the graph labels that are not already
    question words, sorted: the same texts and labels always give the same indices."""
    words = Vocabulary.build(questions).tokens
    known = set(words)
    return Vocabulary(words + sorted({label for label in labels if label not in known} - {PAD, UNK}))


def encode_graph(objects: list[dict], vocab: Vocabulary) -> dict:
    """One scene graph as tensors.

    objects: ``{"name": str, "attributes": [str], "box": (x1, y1, x2, y2) fractions,
    "relations": [(label, index of the other object)]}`` per node, in node order.
    Labels missing from the vocabulary encode as ``<unk>``.
    """
    unk = vocab.index[UNK]
    names = torch.tensor([vocab.index.get(o["name"], unk) for o in objects], dtype=torch.long)
    width = max([len(o["attributes"]) for o in objects] + [1])
    attrs = torch.zeros(len(objects), width, dtype=torch.long)
    for i, o in enumerate(objects):
        attrs[i, : len(o["attributes"])] = torch.tensor([vocab.index.get(a, unk) for a in o["attributes"]],
                                                        dtype=torch.long)
    boxes = torch.tensor([list(o["box"]) for o in objects], dtype=torch.float32).reshape(len(objects), 4)
    edges = [(i, j, vocab.index.get(label, unk)) for i, o in enumerate(objects) for label, j in o["relations"]]
    return {"names": names, "attrs": attrs, "boxes": boxes,
            "edges": torch.tensor(edges, dtype=torch.long).reshape(len(edges), 3)}


def collate_graphs(graphs: list[dict]) -> dict:
    """Pad a list of ``encode_graph`` results into the batch tensors of the module docstring."""
    b = len(graphs)
    n = max(len(g["names"]) for g in graphs)
    a = max(g["attrs"].shape[1] for g in graphs)
    e = max([len(g["edges"]) for g in graphs] + [1])
    batch = {"node_names": torch.zeros(b, n, dtype=torch.long), "node_attrs": torch.zeros(b, n, a, dtype=torch.long),
             "node_boxes": torch.zeros(b, n, 4), "node_mask": torch.zeros(b, n, dtype=torch.bool),
             "edges": torch.zeros(b, e, 3, dtype=torch.long), "edge_mask": torch.zeros(b, e, dtype=torch.bool)}
    for row, g in enumerate(graphs):
        k, m = len(g["names"]), len(g["edges"])
        batch["node_names"][row, :k] = g["names"]
        batch["node_attrs"][row, :k, : g["attrs"].shape[1]] = g["attrs"]
        batch["node_boxes"][row, :k] = g["boxes"]
        batch["node_mask"][row, :k] = True
        batch["edges"][row, :m] = g["edges"]
        batch["edge_mask"][row, :m] = True
    return batch


def collate_graph_vqa(items: list[dict]) -> dict:
    """Items ``{"question", "graph", "image_id", "target"}`` → a batch with the graph tensors."""
    question, question_len = pad_questions([it["question"] for it in items])
    return {"question": question, "question_len": question_len, **collate_graphs([it["graph"] for it in items]),
            "image_id": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
            "target": torch.tensor([it["target"] for it in items], dtype=torch.long)}
