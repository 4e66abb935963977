"""Region- and scene-graph VQA: vqa_aoa, vqa_subgraph (samplers, graph attention), the question-only
baseline, and the synthetic_scenes data set."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.data.graphs import collate_graphs, encode_graph
from vqalab.data.scenes import ANSWERS, RELATION_PHRASE, generate, relation_holds
from vqalab.models import MODELS, create_model
from vqalab.models.vqa_graph import (
    GraphAttentionLayer,
    IMLETopK,
    flat_edges,
    region_edges,
    relaxed_topk,
    topk_mask,
)
from vqalab.registry import ConfigError
from vqalab.runs import model_from_checkpoint
from vqalab.train import fit, latest_checkpoint

# Models reading scene graphs (or nothing visual): VQA models without an image encoder.
GRAPH_MODELS = [n for n in MODELS.names() if {"vocab_size", "num_answers"} <= set(MODELS.parameters(n))
                and "image_encoder" not in MODELS.parameters(n)]
VOCAB, ANSWERS_N = 20, 5
TINY_SUBGRAPH = {"embed_dim": 8, "general_hidden_dim": 12, "mgat_layers": 2, "num_heads": 3, "dropout": 0.0}


def node(name, attrs, box, relations=()):
    return {"name": name, "attributes": list(attrs), "box": box, "relations": list(relations)}


def make_graph_batch() -> dict:
    """Three graphs of 4, 1 and 3 nodes (padding in nodes, attributes and edges), labels as vocab ids."""
    from vqalab.text import Vocabulary

    vocab = Vocabulary(["<pad>", "<unk>"] + [f"w{i}" for i in range(2, VOCAB)])
    graphs = [
        [node("w2", ["w3", "w4"], (0.1, 0.1, 0.3, 0.3), [("w10", 1), ("w11", 2)]),
         node("w5", ["w6"], (0.5, 0.1, 0.7, 0.4), [("w12", 0)]),
         node("w7", [], (0.2, 0.5, 0.4, 0.9), [("w10", 3), ("w13", 0)]),
         node("w8", ["w9", "w3", "w4"], (0.6, 0.6, 0.9, 0.9))],
        [node("w4", ["w5"], (0.0, 0.0, 1.0, 1.0))],
        [node("w2", ["w6"], (0.1, 0.2, 0.3, 0.4), [("w11", 1)]),
         node("w3", ["w7"], (0.4, 0.2, 0.6, 0.4), [("w12", 2)]),
         node("w9", ["w8"], (0.7, 0.2, 0.9, 0.4), [("w13", 0)])],
    ]
    batch = collate_graphs([encode_graph(g, vocab) for g in graphs])
    lengths = torch.tensor([4, 2, 3])
    question = torch.randint(2, VOCAB, (3, 4), generator=torch.Generator().manual_seed(0))
    question[torch.arange(4)[None, :] >= lengths[:, None]] = 0
    return {"question": question, "question_len": lengths, **batch}


def build(name, **kw):
    extra = TINY_SUBGRAPH if name == "vqa_subgraph" else {}
    return create_model(name, vocab_size=VOCAB, num_answers=ANSWERS_N, **{**extra, **kw})


def test_the_graph_family_is_registered():
    assert {"vqa_subgraph", "vqa_question_only"} <= set(GRAPH_MODELS)
    assert "vqa_aoa" in MODELS.names() and "image_encoder" in MODELS.parameters("vqa_aoa")


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_forward_backward_gives_finite_logits_and_a_gradient_for_every_parameter(name):
    torch.manual_seed(0)
    model = build(name).train()
    logits = model(**make_graph_batch())
    assert logits.shape == (3, ANSWERS_N) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3, 4])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    assert trainable and not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)


@pytest.mark.parametrize("name", GRAPH_MODELS + ["vqa_aoa"])
def test_documented_arguments(name):
    doc = MODELS.describe(name)
    for arg in MODELS.parameters(name):
        assert arg in doc, f"{name}: argument '{arg}' is not documented"


@pytest.mark.parametrize("sampler", ["imle", "gumbel"])
@pytest.mark.parametrize("use_mgat", [True, False])
def test_subgraph_every_parameter_gets_a_gradient_with_each_sampler(sampler, use_mgat):
    torch.manual_seed(1)
    model = build("vqa_subgraph", sampler=sampler, use_mgat=use_mgat, nb_samples=2).train()
    F.cross_entropy(model(**make_graph_batch()), torch.tensor([0, 3, 4])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("sampler", ["imle", "gumbel"])
def test_both_samplers_send_a_gradient_to_the_node_scorer(sampler):
    torch.manual_seed(2)
    # A large beta makes the IMLE target move the top-k, so its gradient is non-zero.
    model = build("vqa_subgraph", sampler=sampler, beta=1000.0, nb_samples=3).train()
    F.cross_entropy(model(**make_graph_batch()), torch.tensor([0, 3, 4])).backward()
    scorer_grad = sum(p.grad.abs().sum() for p in model.node_scorer.parameters())
    assert scorer_grad > 0


def test_imle_gradient_is_the_difference_of_two_top_k_solutions():
    scores = torch.tensor([[0.5, 2.0, -1.0, 1.0]], requires_grad=True)
    k = torch.tensor([2])
    noise = torch.zeros(1, 1, 4)  # no perturbation: exact solutions
    z = IMLETopK.apply(scores, k, noise, 1.0, 10.0, 1.0)
    assert z.tolist() == [[0.0, 1.0, 0.0, 1.0]]
    grad_z = torch.tensor([[-0.3, 0.0, 0.0, 0.2]])  # the loss wants node 0 in and node 3 out
    z.backward(grad_z)
    # θ' = θ - 10 ∂L/∂z = [3.5, 2.0, -1.0, -1.0]: top-2 is {0, 1}; gradient = (z - z') / β.
    assert torch.allclose(scores.grad, torch.tensor([[-0.1, 0.0, 0.0, 0.1]]))


def test_imle_step_uses_each_examples_own_loss_whatever_the_batch_size():
    # The same example four times, under a batch-mean loss: each row gets a quarter of the
    # single-example ∂L/∂z, yet θ' must move exactly as for the example alone (same top-k), and
    # each row's gradient is a quarter of the single-example one.
    scores = torch.tensor([[0.5, 2.0, -1.0, 1.0]] * 4, requires_grad=True)
    z = IMLETopK.apply(scores, torch.tensor([2] * 4), torch.zeros(1, 4, 4), 1.0, 10.0, 1.0)
    z.backward(torch.tensor([[-0.3, 0.0, 0.0, 0.2]] * 4) / 4)
    assert torch.allclose(scores.grad, torch.tensor([[-0.1, 0.0, 0.0, 0.1]] * 4) / 4)


def test_gumbel_relaxation_is_a_k_hot_vector_and_top_k_picks_the_largest():
    scores = torch.tensor([[3.0, 0.0, 2.0, -5.0, 1.0]])
    soft = relaxed_topk(scores, k=2, tau=0.1)
    assert torch.allclose(soft.sum(dim=1), torch.tensor([2.0]), atol=1e-5)
    assert torch.allclose(soft, torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]]), atol=1e-3)  # low τ: nearly hard
    assert topk_mask(scores, torch.tensor([3])).tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0]]


@pytest.mark.parametrize("use_mgat", [True, False])
def test_selection_is_the_top_k_of_real_nodes_and_is_returned(use_mgat):
    torch.manual_seed(3)
    model = build("vqa_subgraph", sample_k=2, use_mgat=use_mgat).eval()
    batch = make_graph_batch()
    _, selection = model(**batch, return_selection=True)
    assert torch.equal(model.last_selection, selection)
    assert selection.sum(dim=1).tolist() == [2.0, 1.0, 2.0]  # the one-node graph keeps its node
    assert not (selection.bool() & ~batch["node_mask"]).any()  # padding is never chosen
    with torch.no_grad():
        q = model.question_proj(model.question_encoder(batch["question"], batch["question_len"]).vector)
        nodes = model.graph_encoder(batch["node_names"], batch["node_attrs"], batch["node_boxes"])
        if use_mgat:  # the graph attention over the whole graph comes first
            src, dst, rel = flat_edges(batch["node_mask"], batch["edges"], batch["edge_mask"])
            rel = model.relation_proj(model.question_encoder.embed(rel))
            flat = nodes.flatten(0, 1)
            encoded = model.question_encoder(batch["question"], batch["question_len"])
            for layer, instruction in zip(model.mgat, model.instructions(q, encoded.states, encoded.mask)):
                flat = layer(flat, src, dst, rel, instruction.repeat_interleave(4, dim=0))
            nodes = flat.view(3, 4, -1)
        scores = model.node_scorer(nodes, q).masked_fill(~batch["node_mask"], float("-inf"))
    for row, n_real in enumerate([4, 1, 3]):
        expected = set(scores[row, :n_real].topk(min(2, n_real)).indices.tolist())
        assert set(selection[row].nonzero().squeeze(1).tolist()) == expected


def test_without_mgat_the_model_is_the_non_graph_baseline():
    torch.manual_seed(4)
    graph = build("vqa_subgraph", use_mgat=True).eval()
    plain = build("vqa_subgraph", use_mgat=False).eval()
    extra = set(graph.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(("mgat.", "relation_proj.", "instructions.")) for k in extra)
    assert set(plain.state_dict()) < set(graph.state_dict())
    plain.load_state_dict({k: v for k, v in graph.state_dict().items() if k in plain.state_dict()})
    batch = make_graph_batch()
    no_edges = {**batch, "edge_mask": torch.zeros_like(batch["edge_mask"])}
    with torch.no_grad():
        # The baseline, written out: the chosen node vectors pooled under the question, then the head.
        q = plain.question_proj(plain.question_encoder(batch["question"], batch["question_len"]).vector)
        nodes = plain.graph_encoder(batch["node_names"], batch["node_attrs"], batch["node_boxes"])
        _, selection = plain(**batch, return_selection=True)
        logits = plain.pool_scorer(nodes, q) + plain.node_scorer(nodes, q)
        weights = torch.softmax(logits.masked_fill(~selection.bool(), float("-inf")), dim=1)
        pooled = (weights.unsqueeze(-1) * nodes).sum(dim=1)  # attention over the chosen nodes only
        expected = plain.head(torch.cat([pooled, q], dim=1))
        assert torch.allclose(plain(**batch), expected, atol=1e-5)
        assert torch.allclose(plain(**no_edges), plain(**batch))  # relations are not used
        assert not torch.allclose(graph(**no_edges), graph(**batch), atol=1e-4)  # with MGAT they are


def test_graph_attention_matches_a_per_node_softmax_over_incoming_edges():
    torch.manual_seed(5)
    layer = GraphAttentionLayer(dim=6, num_heads=2, activation="relu", dropout=0.0).eval()
    x, rel, q = torch.randn(4, 6), torch.randn(5, 6), torch.randn(4, 6)
    src, dst = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([1, 1, 1, 0, 3])  # node 2 has no incoming edge
    out = layer(x, src, dst, rel, q)
    h = (x @ layer.node_proj.weight.T).view(4, 2, 3)
    r = (rel @ layer.rel_proj.weight.T).view(5, 2, 3)
    guide = layer.question_proj(q).view(4, 2, 3)
    for i in range(4):
        incoming = [e for e in range(5) if dst[e] == i]
        update = torch.zeros(2, 3)
        if incoming:
            logits = torch.stack([F.leaky_relu((h[i] * layer.att_dst).sum(-1) + (h[src[e]] * layer.att_src).sum(-1)
                                               + (r[e] * layer.att_rel).sum(-1), 0.2)
                                  + (h[src[e]] * guide[i]).sum(-1) / 3 ** 0.5 for e in incoming])  # (E_i, 2)
            alpha = torch.softmax(logits, dim=0)
            update = sum(alpha[n].unsqueeze(-1) * (h[src[e]] + r[e]) for n, e in enumerate(incoming))
        expected = layer.norm(x[i] + torch.relu(layer.out(update.reshape(6))))
        assert torch.allclose(out[i], expected, atol=1e-5), i


def test_question_only_ignores_the_visual_inputs():
    torch.manual_seed(6)
    model = build("vqa_question_only").eval()
    batch = make_graph_batch()
    shuffled = {**batch, "node_names": batch["node_names"].flip(0), "node_boxes": torch.rand_like(batch["node_boxes"])}
    assert torch.equal(model(**batch), model(**shuffled))
    assert torch.equal(model(**batch), model(question=batch["question"], question_len=batch["question_len"]))


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("use_mgat", [True, False])
def test_subgraph_parameter_count_matches_the_formula(use_mgat):
    V, A, E, H, L = VOCAB, ANSWERS_N, 8, 12, 2
    model = build("vqa_subgraph", use_mgat=use_mgat, embed_dim=E, general_hidden_dim=H, mgat_layers=L)
    embedding = V * E
    gru = 3 * (E * H + H * H + 2 * H)
    question_proj = H * H + H
    node_encoder = (2 * E + 4) * H + H  # [name; mean attribute; box] → H
    scorer = 2 * (2 * (H * H + H) + H + 1)  # W_n, W_q, v: the node scorer and the pooling scorer
    head = 2 * H * H + H + H * A + A
    # Per layer: W, U, Q, W_o; a (3 parts); Q and W_o biases; LayerNorm; its instruction query P_l.
    mgat = L * (4 * H * H + 3 * H + 2 * H + 2 * H + H * H + H) + E * H  # + the relation projection
    mgat += H * H + H  # the instructions' output projection W_o
    expected = embedding + gru + question_proj + node_encoder + scorer + head + (mgat if use_mgat else 0)
    assert count(model) == expected


def make_region_batch() -> dict:
    """Two images of 3 and 2 regions (the second padded with a zero region): features (D = 3) then box."""
    regions = torch.zeros(2, 3, 3 + 4)
    regions[0, :, :3] = torch.randn(3, 3)
    regions[0, :, 3:] = torch.tensor([[0.0, 0.0, 0.2, 0.4], [0.5, 0.5, 0.9, 0.7], [0.1, 0.6, 0.3, 0.9]])
    regions[1, :2, :3] = torch.randn(2, 3)
    regions[1, :2, 3:] = torch.tensor([[0.2, 0.2, 0.4, 0.4], [0.6, 0.1, 0.8, 0.5]])
    return {"question": torch.tensor([[2, 3, 4], [5, 6, 0]]), "question_len": torch.tensor([3, 2]),
            "image": regions.transpose(1, 2).unsqueeze(-1), "boxes": regions[..., 3:]}


def test_each_graph_attention_layer_reads_its_own_instruction_from_the_question_tokens():
    torch.manual_seed(8)
    model = build("vqa_subgraph", mgat_layers=2).eval()
    batch = make_graph_batch()
    encoded = model.question_encoder(batch["question"], batch["question_len"])
    q = model.question_proj(encoded.vector)
    instructions = model.instructions(q, encoded.states, encoded.mask)
    for row, length in enumerate(batch["question_len"].tolist()):
        for layer, query in enumerate(model.instructions.queries):
            states = encoded.states[row, :length]  # real tokens only
            weights = torch.softmax(states @ query(q[row]) / states.shape[-1] ** 0.5, dim=0)
            expected = model.instructions.out(weights @ states)
            assert torch.allclose(instructions[layer][row], expected, atol=1e-5), (row, layer)
    assert not torch.allclose(instructions[0], instructions[1])  # the layers read different instructions


def test_region_edges_join_every_pair_of_real_regions_with_their_box_geometry():
    batch = make_region_batch()
    mask = torch.tensor([[True, True, True], [True, True, False]])
    src, dst, geometry = region_edges(mask, batch["boxes"])
    assert len(src) == 9 + 4  # 3² and 2² ordered pairs, self-loops included; padding joins nothing
    assert not ({5} & (set(src.tolist()) | set(dst.tolist())))  # flat index 5: image 1's padding region
    boxes = batch["boxes"].reshape(6, 4)
    for j, i, g in zip(src.tolist(), dst.tolist(), geometry):
        (x1, y1, x2, y2), (u1, v1, u2, v2) = boxes[i].tolist(), boxes[j].tolist()
        w, h, w_j, h_j = x2 - x1, y2 - y1, u2 - u1, v2 - v1
        expected = [((u1 + u2) / 2 - (x1 + x2) / 2) / w, ((v1 + v2) / 2 - (y1 + y2) / 2) / h,
                    math.log(w_j / w), math.log(h_j / h)]
        assert torch.allclose(g, torch.tensor(expected), atol=1e-5), (j, i)


@pytest.mark.parametrize("use_mgat", [True, False])
def test_subgraph_over_region_features(use_mgat):
    torch.manual_seed(7)
    model = build("vqa_subgraph", image_dim=7, use_mgat=use_mgat, sample_k=2).train()
    batch = make_region_batch()
    logits = model(**batch)
    assert logits.shape == (2, ANSWERS_N) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([1, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    _, selection = model.eval()(**batch, return_selection=True)
    assert selection.sum(dim=1).tolist() == [2.0, 2.0] and selection[1, 2] == 0  # padding is never chosen
    with pytest.raises(ValueError, match="needs the batch's 'image' regions and their 'boxes'"):
        model(question=batch["question"], question_len=batch["question_len"], image=batch["image"])
    V, A, E, H, L, D = VOCAB, ANSWERS_N, 8, 12, 2, 7
    expected = (V * E + 3 * (E * H + H * H + 2 * H) + H * H + H  # question embedding, GRU, projection
                + D * H + H  # region features → node
                + 2 * (2 * (H * H + H) + H + 1) + 2 * H * H + H + H * A + A  # two scorers, classifier
                + (L * (5 * H * H + 8 * H) + H * H + H + 4 * H if use_mgat else 0))  # MGAT, instructions, geometry
    assert count(model) == expected


def test_aoa_parameter_count_matches_the_formula():
    V, A, E, Q, H, L, D = VOCAB, ANSWERS_N, 8, 10, 16, 3, 24
    model = create_model("vqa_aoa", vocab_size=V, num_answers=A, embed_dim=E, question_dim=Q, hidden_dim=H,
                         aoa_layers=L, num_heads=4, image_dim=D)
    aoa = (4 * H * H + 4 * H) + 2 * (2 * H * H + H)  # multi-head attention (q, k, v, out) + W_i + W_g
    expected = (V * E + 3 * (E * Q + Q * Q + 2 * Q)  # word embedding, GRU
                + D * H + H + Q * H + H  # region and question projections
                + L * (aoa + 2 * H) + aoa  # refiner layers (with LayerNorm) + decoder
                + H * H + H + H * A + A)  # classifier
    assert count(model) == expected


def test_aoa_refines_regions_and_answers_from_region_features():
    torch.manual_seed(7)
    model = create_model("vqa_aoa", vocab_size=VOCAB, num_answers=ANSWERS_N, image_dim=15, hidden_dim=16,
                         aoa_layers=2).eval()
    regions = torch.randn(2, 15, 5, 1)  # region features as a (D, K, 1) map, as the data yields them
    question, lengths = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    logits = model(regions, question, lengths)
    assert logits.shape == (2, ANSWERS_N)
    # Attention is permutation invariant over regions: reordering them leaves the answer unchanged.
    assert torch.allclose(model(regions.flip(2), question, lengths), logits, atol=1e-5)
    with pytest.raises(ConfigError, match="num_heads = 3 does not divide the hidden size 16"):
        create_model("vqa_aoa", vocab_size=VOCAB, num_answers=ANSWERS_N, hidden_dim=16, num_heads=3)


def test_subgraph_settings_are_checked():
    with pytest.raises(ConfigError, match="mgat_layers = 0: expected at least 1 with use_mgat"):
        build("vqa_subgraph", mgat_layers=0)
    with pytest.raises(ConfigError, match="sample_k = 0: expected at least 1"):
        build("vqa_subgraph", sample_k=0)
    with pytest.raises(ConfigError, match=r"sampler = 'simple': expected Literal\['imle', 'gumbel'\]"):
        build("vqa_subgraph", sampler="simple")


# --- synthetic_scenes -----------------------------------------------------------------------------

TINY_SCENES = {"name": "synthetic_scenes", "num_train": 66, "num_val": 22}
QUESTION_PATTERN = re.compile(r"what color is the (\w+) (left of|right of|above|below|near) the (\w+) (\w+)\?$")


def test_scenes_are_seeded_and_answers_balanced():
    first, again = build_data(TINY_SCENES), build_data(TINY_SCENES)
    other = build_data({**TINY_SCENES, "scene_seed": 1})
    assert first.train.texts == again.train.texts and first.train.targets == again.train.targets
    assert first.train.texts != other.train.texts
    counts = np.bincount(first.train.targets, minlength=len(ANSWERS))
    assert counts.tolist() == [66 // len(ANSWERS)] * len(ANSWERS)  # 66 questions, 11 answers, 6 each
    assert first.class_names == list(ANSWERS)
    assert first.train.texts != first.val.texts  # separate random streams


def read_relation(objects: list[dict], shape: str, phrase: str, ref_color: str, ref_shape: str) -> tuple[dict, list]:
    """Brute force: the named reference object (unique) and the objects of ``shape`` <phrase> it."""
    refs = [o for o in objects if o["color"] == ref_color and o["shape"] == ref_shape]
    assert len(refs) == 1, (ref_color, ref_shape)
    rel = {v: k for k, v in RELATION_PHRASE.items()}[phrase]
    return refs[0], [o for o in objects if o is not refs[0] and o["shape"] == shape
                     and relation_holds(rel, o, refs[0], 0.3)]


def test_one_relation_colour_answers_agree_with_a_brute_force_reading_of_the_scene():
    rng = np.random.default_rng(3)
    scenes, questions = generate(220, rng, min_objects=4, max_objects=7, near_distance=0.3,
                                 two_relation_fraction=0.0, questions_per_scene=3)
    checked = 0
    for q in questions:
        match = QUESTION_PATTERN.match(q["question"])
        if not match:
            continue
        shape, phrase, ref_color, ref_shape = match.groups()
        objects = scenes[q["scene"]]
        ref, hits = read_relation(objects, shape, phrase, ref_color, ref_shape)
        assert len(hits) == 1 and hits[0]["color"] == q["answer"], q
        assert objects[q["answer_object"]] is hits[0], q  # the recorded answer object is that object
        # Without the relation the question is ambiguous: another object of that shape is in the scene.
        assert sum(o["shape"] == shape for o in objects if o is not ref) >= 2, q
        checked += 1
    assert checked >= 50
    for q in questions:  # every answer object carries its answer; yes/no questions have none
        objects = scenes[q["scene"]]
        if q["answer"] in ("yes", "no"):
            assert q["answer_object"] is None
        else:
            assert q["answer"] in (objects[q["answer_object"]]["color"], objects[q["answer_object"]]["shape"]), q


TWO_RELATIONS = re.compile(r"what color is the (\w+) (left of|right of|above|below|near) the (\w+) (\w+) and "
                           r"(left of|right of|above|below|near) the (\w+) (\w+)\?$")


def test_two_relation_questions_need_both_relations():
    rng = np.random.default_rng(4)
    scenes, questions = generate(60, rng, min_objects=5, max_objects=8, near_distance=0.3,
                                 two_relation_fraction=1.0, questions_per_scene=2)
    checked = 0
    for q in questions:
        match = TWO_RELATIONS.match(q["question"])
        if not match:
            continue
        shape, phrase2, color2, shape2, phrase3, color3, shape3 = match.groups()
        groups = [read_relation(scenes[q["scene"]], shape, *relation)[1]
                  for relation in ((phrase2, color2, shape2), (phrase3, color3, shape3))]
        both = [o for o in groups[0] if any(o is other for other in groups[1])]
        assert len(both) == 1 and both[0]["color"] == q["answer"], q
        assert len(groups[0]) >= 2 and len(groups[1]) >= 2, q  # neither relation alone singles it out
        checked += 1
    assert checked >= 20


def test_scene_graph_edges_follow_the_object_positions():
    data = build_data(TINY_SCENES)
    vocab = {t: i for i, t in enumerate(data.vocab)}
    assert vocab["left"] < len(data.vocab) and "left" in data.train.texts[0] + " left"  # relation labels are words
    item = data.train[0]
    boxes, edges = item["graph"]["boxes"], item["graph"]["edges"]
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    lefts = {(s, d) for s, d, r in edges.tolist() if r == vocab["left"]}
    expected = {(i, j) for i in range(len(boxes)) for j in range(len(boxes)) if i != j and centre_x[i] < centre_x[j]}
    assert lefts == expected


def test_scenes_inputs_image_and_regions():
    image = build_data({**TINY_SCENES, "inputs": "image", "image_size": 32})
    assert image.train[0]["image"].shape == (3, 32, 32) and "image_dim" not in image.model_kwargs
    regions = build_data({**TINY_SCENES, "inputs": "regions", "max_objects": 6})
    assert regions.train[0]["image"].shape == (15, 6, 1) and regions.model_kwargs["image_dim"] == 15
    item = regions.train[0]
    assert "boxes" in regions.input_keys and torch.equal(item["boxes"], item["image"][-4:, :, 0].t())
    centres = (item["boxes"][:, :2] + item["boxes"][:, 2:]) / 2  # objects: boxes around centres in (0, 1)
    real = item["image"][:3].sum(dim=0)[:, 0] > 0  # a shape one-hot marks a real object
    assert ((centres[real] > 0) & (centres[real] < 1)).all() and item["boxes"][~real].abs().sum() == 0
    with pytest.raises(ConfigError, match="min_objects = 5, max_objects = 3"):
        build_data({**TINY_SCENES, "min_objects": 5, "max_objects": 3})


@pytest.mark.parametrize("name, model_kwargs, inputs", [
    ("vqa_subgraph", TINY_SUBGRAPH, "scene_graph"),
    ("vqa_question_only", {}, "scene_graph"),
    ("vqa_ban", {"hidden_dim": 8, "use_counter": True}, "regions"),  # the counter reads the regions' boxes
    ("vqa_subgraph", TINY_SUBGRAPH, "regions"),  # objects as regions, box geometry as relations
])
def test_scene_models_train_with_the_training_loop_and_reload(name, model_kwargs, inputs, tmp_path):
    model = {"name": name, **model_kwargs}
    cfg = build_config({"experiment": "scenes", "name": name, "runs_root": str(tmp_path), "seed": 1,
                        "model": model, "data": {**TINY_SCENES, "inputs": inputs}, "optim": {"lr": 3e-3},
                        "train": {"epochs": 2, "batch_size": 16, "progress": False}})
    data = build_data(cfg.data)
    result = fit(cfg, data=data)
    assert result.summary["status"] == "completed", result.summary.get("error")
    assert result.summary["best_train_loss"] < result.summary["first_train_loss"]
    reloaded, _ = model_from_checkpoint(latest_checkpoint(result.run_dir))
    batch = data.collate([data.val[i] for i in range(4)])
    logits = reloaded(**{k: batch[k] for k in data.input_keys})
    assert logits.shape == (4, len(ANSWERS)) and torch.isfinite(logits).all()
