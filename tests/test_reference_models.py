"""vqa_att_mutan, vqa_ban and vqa_san against the models they are named after.

- Att-MUTAN: Cadene/vqa.pytorch, ``vqa/models/att.py`` (``MutanAtt``) and ``fusion.py``
  (``MutanFusion``, ``MutanFusion2d``), options ``options/vqa/mutan_att_trainval.yaml``.
- BAN: jnhwkim/ban-vqa, ``base_model.py`` (``BanModel``, ``build_ban``), ``attention.py``
  (``BiAttention``), ``bc.py`` (``BCNet``), ``fc.py`` (``FCNet``), ``classifier.py``.
- SAN: Yang et al. 2016, "Stacked Attention Networks for Image Question Answering", eqs. 15-19.

For each: the reference's layer list, written here from the reference, gives the parameter count
per layer group; a float64 re-implementation of the reference's forward pass (eval mode), fed the
weights of a small model, gives the same logits; in training mode dropout acts at the
reference's sites. The question encoders are not part of the comparison: both sides start from
our encoder's question vector / token states.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vqalab.config import load_config
from vqalab.models import create_model

VOCAB, ANSWERS = 20, 9


def group_counts(model: torch.nn.Module, groups: dict[str, str]) -> dict[str, int]:
    """Parameters per layer group: group name → sum over parameters whose name starts with the prefix."""
    counts = {g: 0 for g in groups}
    for name, p in model.named_parameters():
        for group, prefix in groups.items():
            if name.startswith(prefix):
                counts[group] += p.numel()
    return counts


def linear_params(layers: list[tuple[int, int]], weight_norm: bool = False) -> int:
    """Weights and biases of Linear(in, out) layers (a 1×1 convolution counts the same); ban-vqa's
    weight normalisation with ``dim=None`` adds one scale g per matrix."""
    return sum(i * o + o + (1 if weight_norm else 0) for i, o in layers)


def model_kwargs_of(params_file: str) -> dict:
    return {k: v for k, v in load_config(params_file).model.items() if k != "name"}


def make_inputs(*, dim_v: int, grid: int = 3, batch: int = 4, length: int = 5, seed: int = 0):
    """Precomputed image features (B, dim_v, grid, grid) and full-length questions (no padding)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim_v, grid, grid, generator=gen, dtype=torch.float64)
    question = torch.randint(2, VOCAB, (batch, length), generator=gen)
    return {"image": image, "question": question, "question_len": torch.full((batch,), length)}


def zero_fraction(t: torch.Tensor) -> float:
    return (t == 0).double().mean().item()


def input_recorder(module: torch.nn.Module) -> list[torch.Tensor]:
    """The inputs ``module`` receives, appended at each call."""
    seen = []
    module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    return seen


def output_recorder(module: torch.nn.Module) -> list[torch.Tensor]:
    seen = []
    module.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    return seen


# --- Att-MUTAN vs vqa.pytorch MutanAtt --------------------------------------------------------------

def mutan_reference_groups(*, dim_v, dim_q, glimpses, att_dim_hv, att_dim_hq, att_dim_mm, att_rank,
                           dim_hv, dim_hq, dim_mm, rank, num_answers) -> dict[str, int]:
    """vqa.pytorch ``MutanAtt``'s layers (fusions built with visual/question_embedding=False)."""
    return {
        "attention_fusion": linear_params(
            [(dim_v, att_dim_hv),  # conv_v_att (1×1)
             (dim_q, att_dim_hq)]  # linear_q_att
            + [(att_dim_hv, att_dim_mm), (att_dim_hq, att_dim_mm)] * att_rank),  # fusion_att.list_linear_h{v,q}
        "glimpse_scores": linear_params([(att_dim_mm, glimpses)]),  # conv_att (1×1)
        "fusion": linear_params(
            [(dim_v, dim_hv // glimpses)] * glimpses  # list_linear_v_fusion
            + [(dim_q, dim_hq)]  # linear_q_fusion
            + [(dim_hv, dim_mm), (dim_hq, dim_mm)] * rank),  # fusion_classif.list_linear_h{v,q}
        "head": linear_params([(dim_mm, num_answers)]),  # linear_classif
    }


MUTAN_GROUPS = {"attention_fusion": "attention_fusion.", "glimpse_scores": "glimpse_scores.", "fusion": "fusion.",
                "head": "head."}

# options/vqa/mutan_att_trainval.yaml (dim_v 2048 fbresnet152, dim_q 2400 skip-thoughts, 2000 answers).
MUTAN_ATT_TRAINVAL = {"dim_v": 2048, "dim_q": 2400, "glimpses": 2, "att_dim_hv": 310, "att_dim_hq": 310,
                      "att_dim_mm": 510, "att_rank": 5, "dim_hv": 620, "dim_hq": 310, "dim_mm": 510, "rank": 5,
                      "num_answers": 2000}


@pytest.mark.parametrize("sizes", ["mutan_att_trainval", "lab_preset"])
def test_att_mutan_parameter_count_per_layer_group_matches_vqa_pytorch(sizes):
    if sizes == "mutan_att_trainval":
        ref = MUTAN_ATT_TRAINVAL
        kwargs = {k: v for k, v in ref.items() if k not in ("dim_v", "dim_q", "num_answers")}
        kwargs.update(question_dim=ref["dim_q"])
    else:
        kwargs = model_kwargs_of("params/train/vqa_att_mutan.yaml")
        ref = {k: kwargs[k] for k in ("glimpses", "att_dim_hv", "att_dim_hq", "att_dim_mm", "att_rank", "dim_hv",
                                      "dim_hq", "dim_mm", "rank")}
        ref.update(dim_v=2048, dim_q=kwargs["question_dim"], num_answers=3000)
        assert (ref["dim_q"], ref["dim_hv"], ref["dim_hq"], ref["dim_mm"], ref["rank"], ref["att_rank"]) == \
            (2400, 620, 310, 510, 10, 5)  # lab note 000
    kwargs.update(embed_dim=8)
    with torch.device("meta"):  # sizes only
        model = create_model("vqa_att_mutan", vocab_size=VOCAB, num_answers=ref["num_answers"],
                             image_dim=ref["dim_v"], **kwargs)
    assert group_counts(model, MUTAN_GROUPS) == mutan_reference_groups(**ref)


def mutan_reference_weights(model) -> dict[str, torch.Tensor]:
    """Our weights under vqa.pytorch's state-dict names and shapes."""
    att, fus = model.attention_fusion, model.fusion
    R_att, R = att.rank, fus.rank
    w = {
        "conv_v_att.weight": att.linear_v[0].weight[:, :, None, None], "conv_v_att.bias": att.linear_v[0].bias,
        "linear_q_att.weight": att.linear_q.weight, "linear_q_att.bias": att.linear_q.bias,
        "conv_att.weight": model.glimpse_scores.weight[:, :, None, None], "conv_att.bias": model.glimpse_scores.bias,
        "linear_q_fusion.weight": fus.linear_q.weight, "linear_q_fusion.bias": fus.linear_q.bias,
        "linear_classif.weight": model.head[1].weight, "linear_classif.bias": model.head[1].bias,
    }
    for g, layer in enumerate(fus.linear_v):
        w[f"list_linear_v_fusion.{g}.weight"], w[f"list_linear_v_fusion.{g}.bias"] = layer.weight, layer.bias
    for prefix, fusion, rank in (("fusion_att", att, R_att), ("fusion_classif", fus, R)):
        for side in ("v", "q"):
            stacked = getattr(fusion, f"rank_{side}")
            for r, (weight, bias) in enumerate(zip(stacked.weight.chunk(rank), stacked.bias.chunk(rank))):
                w[f"{prefix}.list_linear_h{side}.{r}.weight"], w[f"{prefix}.list_linear_h{side}.{r}.bias"] = weight, bias
    return {k: v.detach().clone() for k, v in w.items()}


def mutan_fusion_reference(w, prefix, x_v, x_q, rank):
    """vqa.pytorch ``MutanFusion.forward`` without embeddings, eval mode: Σ_r (W_hq^r x_q) ⊙ (W_hv^r x_v)."""
    x_mm = []
    for r in range(rank):
        x_hv = F.linear(x_v, w[f"{prefix}.list_linear_hv.{r}.weight"], w[f"{prefix}.list_linear_hv.{r}.bias"])
        x_hq = F.linear(x_q, w[f"{prefix}.list_linear_hq.{r}.weight"], w[f"{prefix}.list_linear_hq.{r}.bias"])
        x_mm.append(x_hq * x_hv)
    return torch.stack(x_mm, dim=1).sum(1)  # no activation_mm in the MUTAN options


def mutan_att_reference(w, input_v, x_q_vec, *, glimpses, att_rank, rank):
    """vqa.pytorch ``MutanAtt.forward`` after seq2vec, eval mode (dropouts are identities)."""
    b, dim_v, width, height = input_v.shape
    # _attention
    x_v = torch.tanh(F.conv2d(input_v, w["conv_v_att.weight"], w["conv_v_att.bias"]))
    x_v = x_v.view(b, x_v.shape[1], width * height).transpose(1, 2)
    x_q = torch.tanh(F.linear(x_q_vec, w["linear_q_att.weight"], w["linear_q_att.bias"]))
    x_q = x_q.view(b, 1, -1).expand(b, width * height, x_q.shape[1])
    x_att = mutan_fusion_reference(w, "fusion_att", x_v.reshape(b * width * height, -1),
                                   x_q.reshape(b * width * height, -1), att_rank)  # MutanFusion2d
    x_att = x_att.view(b, width, height, -1).transpose(2, 3).transpose(1, 2)
    x_att = F.conv2d(x_att, w["conv_att.weight"], w["conv_att.bias"]).view(b, glimpses, width * height)
    v = input_v.view(b, dim_v, width * height).transpose(1, 2)
    list_v_att = [(F.softmax(x_att[:, g], dim=1).unsqueeze(2) * v).sum(1) for g in range(glimpses)]
    # _fusion_glimpses
    x_v = torch.cat([torch.tanh(F.linear(v_att, w[f"list_linear_v_fusion.{g}.weight"],
                                         w[f"list_linear_v_fusion.{g}.bias"]))
                     for g, v_att in enumerate(list_v_att)], 1)
    x_q = torch.tanh(F.linear(x_q_vec, w["linear_q_fusion.weight"], w["linear_q_fusion.bias"]))
    x = mutan_fusion_reference(w, "fusion_classif", x_v, x_q, rank)
    # _classif: no activation in the options
    return F.linear(x, w["linear_classif.weight"], w["linear_classif.bias"])


SMALL_MUTAN = {"glimpses": 2, "att_dim_hv": 6, "att_dim_hq": 5, "att_dim_mm": 7, "att_rank": 3, "dim_hv": 8,
               "dim_hq": 6, "dim_mm": 7, "rank": 4, "embed_dim": 6, "question_dim": 10}


def small_mutan(**overrides):
    torch.manual_seed(0)
    kwargs = {**SMALL_MUTAN, **overrides}
    return create_model("vqa_att_mutan", vocab_size=VOCAB, num_answers=ANSWERS, image_dim=12, **kwargs)


def test_att_mutan_logits_equal_a_float64_vqa_pytorch_forward():
    model = small_mutan(dropout_in=0.5).double().eval()
    batch = make_inputs(dim_v=12)
    with torch.no_grad():
        logits = model(**batch)
        q = model.question_encoder(batch["question"], batch["question_len"]).vector
        expected = mutan_att_reference(mutan_reference_weights(model), batch["image"], q, glimpses=2, att_rank=3,
                                       rank=4)
    assert_close(logits, expected, rtol=1e-10, atol=1e-12)


def test_att_mutan_dropout_sites_in_training():
    model = small_mutan(dropout_in=0.5, att_dim_mm=64).double().train()
    seen = {"attention map before glimpse scores": input_recorder(model.glimpse_scores),
            "attention image input": input_recorder(model.attention_fusion.linear_v[0]),
            "attention question input": input_recorder(model.attention_fusion.linear_q),
            "answer-fusion glimpse input": input_recorder(model.fusion.linear_v[1]),
            "answer-fusion question input": input_recorder(model.fusion.linear_q),
            "classifier input": input_recorder(model.head[1]),
            "rank projections (dropout_hidden 0)": input_recorder(model.fusion.rank_v)}
    batch = make_inputs(dim_v=12, grid=6, batch=16)
    torch.manual_seed(1)
    model(**batch)
    fractions = {site: zero_fraction(x[0]) for site, x in seen.items()}
    # vqa.pytorch drops out half the attention map (dropout_mm 0.5) before conv_att, and every fusion input.
    for site, fraction in fractions.items():
        if site.startswith("rank"):
            assert fraction == 0.0, site
        else:
            assert 0.35 < fraction < 0.65, (site, fraction)
    model.eval()
    seen["attention map before glimpse scores"].clear()
    model(**batch)
    assert zero_fraction(seen["attention map before glimpse scores"][0]) == 0.0


def test_att_mutan_glimpses_must_divide_dim_hv():
    from vqalab.registry import ConfigError

    with pytest.raises(ConfigError, match=r"model.glimpses = 3, model.dim_hv = 8: expected glimpses ≥ 1 dividing"):
        small_mutan(glimpses=3)


# --- BAN vs ban-vqa BanModel ------------------------------------------------------------------------

def ban_reference_groups(*, v_dim, num_hid, gamma, num_answers, weight_norm, q_dim=None) -> dict[str, int]:
    """ban-vqa ``build_ban`` (task vqa, without the counter): layer shapes of BiAttention, b_net,
    q_prj and the classifier."""
    q_dim = q_dim or num_hid  # ban-vqa's question states are num_hid wide
    k = 3  # BiAttention's BCNet(k=3)
    return {
        "attention": linear_params([(v_dim, num_hid * k), (q_dim, num_hid * k)], weight_norm)  # v_net, q_net
        + gamma * num_hid * k + (1 if weight_norm else 0)  # h_mat (1, gamma, 1, k·num_hid), weight-normalised
        + gamma,  # h_bias (1, gamma, 1, 1)
        "pooling": gamma * linear_params([(v_dim, num_hid), (q_dim, num_hid)], weight_norm),  # b_net: BCNet(k=1)
        "question_update": gamma * linear_params([(num_hid, q_dim)], weight_norm),  # q_prj: FCNet([num_hid, num_hid])
        "head": linear_params([(q_dim, 2 * num_hid), (2 * num_hid, num_answers)], weight_norm),  # SimpleClassifier
    }


BAN_GROUPS = {"attention": "attention.", "pooling": "pooling.", "question_update": "question_update.",
              "head": "head."}


@pytest.mark.parametrize("weight_norm", [True, False])
def test_ban_parameter_count_per_layer_group_matches_ban_vqa_defaults(weight_norm):
    # ban-vqa main.py defaults: num_hid 1280, gamma 8; 2048-d region features, 3129 answers.
    with torch.device("meta"):
        model = create_model("vqa_ban", vocab_size=VOCAB, num_answers=3129, image_dim=2048, embed_dim=8,
                             question_dim=1280, hidden_dim=1280, glimpses=8, weight_norm=weight_norm)
    assert group_counts(model, BAN_GROUPS) == ban_reference_groups(v_dim=2048, num_hid=1280, gamma=8,
                                                                   num_answers=3129, weight_norm=weight_norm)


def test_ban_parameter_count_per_layer_group_at_the_lab_preset():
    kwargs = model_kwargs_of("params/train/vqa_ban.yaml")
    assert (kwargs["hidden_dim"], kwargs["glimpses"], kwargs["weight_norm"]) == (1024, 2, True)
    with torch.device("meta"):
        model = create_model("vqa_ban", vocab_size=VOCAB, num_answers=3129, image_dim=2048, **kwargs)
    assert group_counts(model, BAN_GROUPS) == ban_reference_groups(
        v_dim=2048, num_hid=1024, gamma=2, num_answers=3129, weight_norm=True, q_dim=kwargs["question_dim"])


def effective(layer_or_module, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(g, v) of a weight-normalised tensor, or (None, w) of a plain one: the reference normalises itself."""
    parametrizations = getattr(layer_or_module, "parametrizations", None)
    if parametrizations is not None and name in parametrizations:
        p = parametrizations[name]
        return p.original0.detach().clone(), p.original1.detach().clone()
    return None, getattr(layer_or_module, name).detach().clone()


def ban_reference_weights(model) -> dict:
    """Our weights under ban-vqa's names; weight-normalised matrices as their (g, v) pair."""
    def fc(seq):  # our projection: Dropout → Linear → [activation]
        return {"wn": effective(seq[1]), "bias": seq[1].bias.detach().clone()}

    att = model.attention
    w = {"v_att.v_net": fc(att.v_proj), "v_att.q_net": fc(att.q_proj),
         "v_att.h_mat": effective(att, "glimpse_vectors"),  # (G, k·num_hid): ban-vqa's (1, G, 1, k·num_hid)
         "v_att.h_bias": att.glimpse_bias.detach().clone(),
         "classifier.0": {"wn": effective(model.head[0]), "bias": model.head[0].bias.detach().clone()},
         "classifier.3": {"wn": effective(model.head[3]), "bias": model.head[3].bias.detach().clone()}}
    for g, (pool, update) in enumerate(zip(model.pooling, model.question_update)):
        w[f"b_net.{g}.v_net"], w[f"b_net.{g}.q_net"] = fc(pool.v_proj), fc(pool.q_proj)
        w[f"q_prj.{g}"] = fc(update)
    if model.counter is not None:
        w["counter"] = [f.weight.detach().clone() for f in model.counter.f]
        for g, update in enumerate(model.count_update):
            w[f"c_prj.{g}"] = fc(update)
    return w


def weight_normed(pair) -> torch.Tensor:
    """torch.nn.utils.weight_norm(dim=None) as ban-vqa uses it: w = g · v / ‖v‖ over the whole tensor."""
    g, v = pair
    return v if g is None else g * v / v.norm()


def ban_fc(entry, x, act):
    """ban-vqa ``FCNet([in, out], act)`` in eval mode: (dropout) → weight-normed linear → act."""
    y = F.linear(x, weight_normed(entry["wn"]), entry["bias"])
    return act(y) if act is not None else y


def ban_reference(w, v, q_emb, *, gamma, act, boxes=None):
    """ban-vqa ``BanModel.forward`` in eval mode, after ``q_emb.forward_all``; with ``boxes`` (B, V, 4)
    the counter runs (``w['counter']`` holds its functions' weights), without them it is left out."""
    # BiAttention.forward_all → BCNet.forward (h_out ≤ 32: low-rank bilinear pooling)
    v_ = ban_fc(w["v_att.v_net"], v, act)  # the attention dropout after v_net is an identity in eval mode
    q_ = ban_fc(w["v_att.q_net"], q_emb, act)
    h_mat = weight_normed(w["v_att.h_mat"])[None, :, None, :]  # (1, G, 1, k·h)
    h_bias = w["v_att.h_bias"][None, :, None, None]
    logits = torch.einsum("xhyk,bvk,bqk->bhvq", h_mat, v_, q_) + h_bias  # (B, G, V, Q)
    mask = (v.abs().sum(2) == 0)[:, None, :, None].expand(logits.size())
    logits = logits.masked_fill(mask, -float("inf"))
    b, _, n_v, n_q = logits.shape
    att = F.softmax(logits.view(b, gamma, n_v * n_q), 2).view(b, gamma, n_v, n_q)
    for g in range(gamma):
        # BCNet(k=1).forward_with_weights
        b_emb = torch.einsum("bvk,bvq,bqk->bk", ban_fc(w[f"b_net.{g}.v_net"], v, act), att[:, g],
                             ban_fc(w[f"b_net.{g}.q_net"], q_emb, act))
        q_emb = ban_fc(w[f"q_prj.{g}"], b_emb.unsqueeze(1), None) + q_emb
        if boxes is not None:
            atten = logits[:, g].max(2).values  # (B, V)
            embed = torch.stack([counter_reference(w["counter"], boxes[i], atten[i], objects=10)
                                 for i in range(b)])
            q_emb = q_emb + ban_fc(w[f"c_prj.{g}"], embed, act).unsqueeze(1)
    # SimpleClassifier: weight-normed linear → ReLU (here: the model's σ) → dropout → weight-normed linear
    hidden = ban_fc(w["classifier.0"], q_emb.sum(1), act)
    return ban_fc(w["classifier.3"], hidden, None)


def small_ban(**overrides):
    torch.manual_seed(0)
    kwargs = {"glimpses": 3, "hidden_dim": 5, "embed_dim": 6, "question_dim": 7, **overrides}
    return create_model("vqa_ban", vocab_size=VOCAB, num_answers=ANSWERS, image_dim=10, **kwargs)


@pytest.mark.parametrize("weight_norm", [False, True])
@pytest.mark.parametrize("activation", ["relu", "swish"])
def test_ban_logits_equal_a_float64_ban_vqa_forward(weight_norm, activation):
    model = small_ban(weight_norm=weight_norm, activation=activation, dropout=0.3).double()
    if weight_norm:  # move each scale g off its initial ‖v‖, so the test sees the normalisation
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("original0"):
                    p.mul_(1.7)
    model.eval()
    batch = make_inputs(dim_v=10)
    batch["image"][1, :, 0, 0] = 0.0  # a zero (padding) region: ban-vqa masks it out of the attention
    with torch.no_grad():
        logits = model(**batch)
        q_emb = model.question_encoder(batch["question"], batch["question_len"]).states
        v = batch["image"].flatten(2).transpose(1, 2)
        act = torch.relu if activation == "relu" else F.silu
        expected = ban_reference(ban_reference_weights(model), v, q_emb, gamma=3, act=act)
    assert_close(logits, expected, rtol=1e-10, atol=1e-12)


def test_ban_weight_norm_keeps_the_reference_shapes_and_normalises_the_whole_matrix():
    plain, normed = small_ban(), small_ban(weight_norm=True)
    assert normed.attention.glimpse_vectors.shape == plain.attention.glimpse_vectors.shape == (3, 15)
    assert normed.head[0].weight.shape == plain.head[0].weight.shape == (10, 7)
    layer = normed.head[0]
    with torch.no_grad():
        layer.parametrizations.weight.original0.fill_(2.0)
    assert_close(layer.weight.norm(), torch.tensor(2.0))  # one scale for the whole matrix (dim=None)


def test_ban_padded_tokens_do_not_change_the_logits():
    # Our one deliberate difference: ban-vqa attends over and sums padded positions; we mask them.
    model = small_ban().double().eval()
    batch = make_inputs(dim_v=10)
    padded = {**batch, "question": F.pad(batch["question"], (0, 3)), "question_len": batch["question_len"]}
    with torch.no_grad():
        assert_close(model(**padded), model(**batch), rtol=1e-10, atol=1e-12)


def test_ban_dropout_sites_in_training():
    # swish is zero only at 0, so the zeros seen are dropout's.
    model = small_ban(dropout=0.5, activation="swish", hidden_dim=40, question_dim=30).double().train()
    att = model.attention
    dropped = {"attention image input": input_recorder(att.v_proj[1]),
               "attention question input": input_recorder(att.q_proj[1]),
               "attention image side": output_recorder(att.dropout),
               "pooling image input": input_recorder(model.pooling[0].v_proj[1]),
               "pooling question input": input_recorder(model.pooling[1].q_proj[1]),
               "question update input": input_recorder(model.question_update[2][1]),
               "classifier hidden": input_recorder(model.head[3])}
    kept = {"attention question side": output_recorder(att.q_proj),
            "pooling image side": output_recorder(model.pooling[0].v_proj),
            "pooling question side": output_recorder(model.pooling[0].q_proj),
            "classifier input": input_recorder(model.head[0])}
    torch.manual_seed(2)
    model(**make_inputs(dim_v=10, grid=4, batch=16))
    for site, x in dropped.items():
        assert 0.35 < zero_fraction(x[0]) < 0.65, site
    for site, x in kept.items():
        assert zero_fraction(x[0]) == 0.0, site


# --- SAN vs Yang et al. 2016 --------------------------------------------------------------------------

def san_reference_groups(*, dim_f, d, k, hops, num_answers) -> dict[str, int]:
    return {"image_proj": linear_params([(dim_f, d)]),  # v_I = tanh(W_I f_I + b_I), eq. 2
            "hops": hops * (d * k  # W_{I,A}, no bias (eq. 15)
                            + linear_params([(d, k),  # W_{Q,A}, b_A
                                             (k, 1)])),  # W_P, b_P (eq. 16)
            "head": linear_params([(d, num_answers)])}  # W_u, b_u (eq. 19)


def test_san_parameter_count_per_layer_group_matches_the_paper():
    # The paper's VQA setting: VGG 512-d regions, 2 layers; d and k 500 here, 1000 answers.
    with torch.device("meta"):
        model = create_model("vqa_san", vocab_size=VOCAB, num_answers=1000, image_dim=512, embed_dim=8,
                             question_dim=500, att_dim=500, hops=2)
    assert group_counts(model, {"image_proj": "image_proj.", "hops": "hops.", "head": "head."}) == \
        san_reference_groups(dim_f=512, d=500, k=500, hops=2, num_answers=1000)


def san_reference(f_I, v_Q, w, hops):
    """Yang et al. 2016, eqs. 2 and 15-19, for regions f_I (B, m, D) and question vector v_Q (B, d)."""
    v_I = torch.tanh(f_I @ w["W_I"].T + w["b_I"])  # (B, m, d)
    u = v_Q
    for k in range(hops):
        h_A = torch.tanh(v_I @ w[f"W_IA{k}"].T + (u @ w[f"W_QA{k}"].T + w[f"b_A{k}"]).unsqueeze(1))  # (B, m, k)
        p_I = torch.softmax(h_A @ w[f"W_P{k}"].T + w[f"b_P{k}"], dim=1)  # (B, m, 1)
        u = (p_I * v_I).sum(1) + u
    return u @ w["W_u"].T + w["b_u"]  # logits of p_ans


def test_san_logits_equal_a_float64_implementation_of_the_paper():
    torch.manual_seed(0)
    model = create_model("vqa_san", vocab_size=VOCAB, num_answers=ANSWERS, image_dim=10, embed_dim=6,
                         question_dim=8, att_dim=5, hops=2, dropout=0.4).double().eval()
    w = {"W_I": model.image_proj[0].weight, "b_I": model.image_proj[0].bias,
         "W_u": model.head[1].weight, "b_u": model.head[1].bias}
    for k, hop in enumerate(model.hops):
        w.update({f"W_IA{k}": hop.image_proj.weight, f"W_QA{k}": hop.query_proj.weight, f"b_A{k}": hop.query_proj.bias,
                  f"W_P{k}": hop.score.weight, f"b_P{k}": hop.score.bias})
    batch = make_inputs(dim_v=10)
    with torch.no_grad():
        logits = model(**batch)
        v_Q = model.question_encoder(batch["question"], batch["question_len"]).vector
        expected = san_reference(batch["image"].flatten(2).transpose(1, 2), v_Q, w, hops=2)
    assert_close(logits, expected, rtol=1e-10, atol=1e-12)


def test_san_dropout_sites_and_the_labs_mlp_classifier():
    torch.manual_seed(0)
    model = create_model("vqa_san", vocab_size=VOCAB, num_answers=ANSWERS, image_dim=10, embed_dim=6,
                         question_dim=8, att_dim=64, hops=2, dropout=0.5).double().train()
    h_A, classifier_in = input_recorder(model.hops[1].score), input_recorder(model.head[1])
    model(**make_inputs(dim_v=10, grid=6, batch=16))
    assert 0.35 < zero_fraction(h_A[0]) < 0.65
    assert 0.2 < zero_fraction(classifier_in[0]) < 0.8  # 16 × 8 entries
    mlp_head = create_model("vqa_san", vocab_size=VOCAB, num_answers=ANSWERS, image_dim=10, embed_dim=6,
                            question_dim=8, hidden_dim=16)
    assert [type(m).__name__ for m in mlp_head.head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert math.prod(mlp_head.head[0].weight.shape) == 8 * 16


# --- BAN's counting module (Zhang et al. 2018; ban-vqa counting.py) -------------------------------------

@pytest.mark.parametrize("weight_norm", [False, True])
def test_ban_counter_parameter_count_per_layer_group(weight_norm):
    # ban-vqa counting.py: one Counter(objects=10) with [PiecewiseLin(16) for _ in range(16)] (8 of
    # them read by its forward), and per glimpse c_prj = FCNet([objects + 1, num_hid], 'ReLU', 0).
    objects, pieces, functions = 10, 16, 16
    with torch.device("meta"):
        model = create_model("vqa_ban", vocab_size=VOCAB, num_answers=3129, image_dim=2048, embed_dim=8,
                             question_dim=1280, hidden_dim=1280, glimpses=8, weight_norm=weight_norm,
                             use_counter=True)
    counts = group_counts(model, {**BAN_GROUPS, "counter": "counter.", "count_update": "count_update."})
    assert counts == {**ban_reference_groups(v_dim=2048, num_hid=1280, gamma=8, num_answers=3129,
                                             weight_norm=weight_norm),
                      "counter": functions * (pieces + 1),
                      "count_update": 8 * linear_params([(objects + 1, 1280)], weight_norm=weight_norm)}
    # 16 × 17 + 8 × (11 × 1280 + 1280) = 123,152; weight norm (dim=None) adds one scale per c_prj matrix
    assert counts["counter"] + counts["count_update"] == 123_152 + (8 if weight_norm else 0)


def boxes_for(batch: dict, seed: int = 0) -> torch.Tensor:
    """(B, h·w, 4) random boxes (x1, y1, x2, y2) in [0, 1], one per region of the batch's image grid."""
    gen = torch.Generator().manual_seed(seed)
    b, _, h, w = batch["image"].shape
    corners = torch.rand(b, h * w, 2, 2, generator=gen, dtype=torch.float64)
    return torch.cat([corners.min(dim=2).values, corners.max(dim=2).values], dim=-1)


def test_ban_with_counter_forward_backward_and_the_boxes_it_needs():
    model = small_ban(use_counter=True).double()
    batch = make_inputs(dim_v=10, grid=4)  # 16 regions: the counter keeps the 10 most attended
    batch["boxes"] = boxes_for(batch)
    logits = model(**batch)
    assert logits.shape == (4, ANSWERS) and torch.isfinite(logits).all()
    logits.sum().backward()
    unused = {id(f.weight) for f in model.counter.f[8:]}  # allocated as in ban-vqa, never read
    assert len(unused) == 8 and all(not f.weight.requires_grad for f in model.counter.f[8:])
    assert all(p.grad is not None for p in model.parameters() if id(p) not in unused)
    assert model.counter.f[7].weight.grad.abs().sum() > 0  # the confidence reaches the loss
    with torch.no_grad():  # the boxes change the answer
        assert not torch.allclose(model.eval()(**batch), model(**{**batch, "boxes": boxes_for(batch, seed=1)}))
    with pytest.raises(ValueError, match=r"vqa_ban with use_counter needs region boxes: the batch has no 'boxes' "
                                         r"\(4, 16, 4\)"):
        model(**{k: v for k, v in batch.items() if k != "boxes"})
    with pytest.raises(ValueError, match=r"boxes: expected shape \(4, 16, 4\) .* got \(4, 9, 4\)"):
        model(**{**batch, "boxes": batch["boxes"][:, :9]})


def test_piecewise_linear_is_the_identity_at_init_and_monotone_from_0_to_1():
    from vqalab.models.layers import PiecewiseLinear

    f = PiecewiseLinear(pieces=16).double()
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert_close(f(x), x)
    with torch.no_grad():
        f.weight[1:].uniform_(-2, 2)  # weight[0] is 0 and stays so: |w| has zero gradient at 0
    y = f(x)
    assert y[0] == 0 and abs(y[-1].item() - 1) < 1e-12 and (y.diff() >= 0).all()
    y.sum().backward()
    assert f.weight.grad[0] == 0


LOGIT_ON, LOGIT_OFF = 40.0, -40.0  # sigmoid → 1 and 0 in float64


def counter_case(boxes: list[list[float]], attended: int, objects: int = 6) -> torch.Tensor:
    """A fresh counter (every f the identity) on one image: the first ``attended`` boxes attended."""
    from vqalab.models.layers import CountingModule

    logits = torch.tensor([[LOGIT_ON] * attended + [LOGIT_OFF] * (len(boxes) - attended)], dtype=torch.float64)
    return CountingModule(objects=objects).double()(torch.tensor([boxes], dtype=torch.float64), logits)[0]


def far_boxes(n: int, start: int = 10) -> list[list[float]]:
    """n unit boxes apart from each other and from everything left of x = start."""
    return [[start + 2.0 * i, 0.0, start + 2.0 * i + 1, 1.0] for i in range(n)]


@pytest.mark.parametrize("attended", [0, 1, 3, 5])
def test_counter_counts_separate_attended_boxes(attended):
    # Non-overlapping boxes with 0/1 attention: the module counts exactly (paper, section 4), confidence 1.
    out = counter_case(far_boxes(8), attended)
    assert_close(out, F.one_hot(torch.tensor(attended), 7).double(), atol=1e-9, rtol=0)


def test_counter_counts_identical_boxes_once():
    # Duplicates of one object (IoU 1) count once, however many are attended.
    out = counter_case([[0.0, 0.0, 1.0, 1.0]] * 4 + far_boxes(4), attended=4)
    assert_close(out, F.one_hot(torch.tensor(1), 7).double(), atol=1e-9, rtol=0)


def test_counter_partial_overlap_gives_a_count_between_one_and_two():
    # Two attended boxes with IoU 1/3 (D = 2/3), 6 unattended ones far away; kept: 6 of the 8.
    out = counter_case([[0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 3.0, 1.0]] + far_boxes(6), attended=2)
    d = 2 / 3
    # Rows 1 and 2 agree except at i = 1, 2, where their dedup scores differ by d: sim = (1 - d)².
    row = 1 + (1 - d) ** 2
    count = math.sqrt(2 * d / row ** 2 + 2 / row)  # off-diagonal scores + diagonal correction
    dist_conf = (34 * 0.5 + 2 * abs(d - 0.5)) / 36  # |D - ½| over the 6 × 6 kept pairs
    confidence = 0.5 + dist_conf  # att_conf = ½ (attention 0 or 1); f8 the identity
    expected = torch.zeros(7, dtype=torch.float64)
    expected[1], expected[2] = (2 - count) * confidence, (count - 1) * confidence
    assert 1.6 < count < 1.8
    assert_close(out, expected, atol=1e-9, rtol=0)


def piecewise_reference(weight: torch.Tensor, x: float) -> torch.Tensor:
    """ban-vqa ``PiecewiseLin`` at one point: normalised |weights|, their sum up to the segment of x,
    plus the fraction of the next one."""
    w = weight.abs() / weight.abs().sum()
    n = len(w) - 1
    i = int(n * x)
    return w[: min(i, n) + 1].sum() + (n * x - i) * w[min(i + 1, n)]


def counter_reference(fw, boxes, logits, *, objects):
    """ban-vqa ``Counter.forward`` for one image, element by element: boxes (K, 4), logits (K,)."""
    f = [lambda x, wt=wt: piecewise_reference(wt, float(x)) for wt in fw]
    keep = sorted(logits.topk(min(objects, len(logits))).indices.tolist())
    a = [torch.sigmoid(logits[i]) for i in keep]
    k = len(keep)

    def iou(p, q):
        bp, bq = boxes[keep[p]], boxes[keep[q]]
        iw = max(0.0, float(min(bp[2], bq[2]) - max(bp[0], bq[0])))
        ih = max(0.0, float(min(bp[3], bq[3]) - max(bp[1], bq[1])))
        area = lambda bx: max(0.0, float(bx[2] - bx[0])) * max(0.0, float(bx[3] - bx[1]))
        return iw * ih / (area(bp) + area(bq) - iw * ih + 1e-12)

    rel = [[a[i] * a[j] for j in range(k)] for i in range(k)]
    dist = [[1 - iou(i, j) for j in range(k)] for i in range(k)]
    dedup = [[f[3](rel[i][j]) * f[4](dist[i][j]) for j in range(k)] for i in range(k)]
    sim = [[math.prod(float(f[2](1 - abs(dedup[i][j] - dedup[i][l]))) for i in range(k)) * f[2](1 - abs(a[j] - a[l]))
            for l in range(k)] for j in range(k)]
    row = [sum(sim[j]) for j in range(k)]
    total = sum(f[0](rel[i][j]) * f[1](dist[i][j]) / (row[i] * row[j]) for i in range(k) for j in range(k))
    total = total + sum(f[0](a[i] * a[i]) / row[i] for i in range(k))
    count = min(max(math.sqrt(float(total) + 1e-20), 0.0), objects)
    one_hot = torch.zeros(objects + 1, dtype=torch.float64)
    low = int(count)
    one_hot[low] += 1 - (count - low)
    one_hot[min(low + 1, objects)] += count - low
    att_conf = sum(abs(f[5](x) - 0.5) for x in a) / k
    dist_conf = sum(abs(f[6](dist[i][j]) - 0.5) for i in range(k) for j in range(k)) / k ** 2
    return one_hot * f[7](att_conf + dist_conf)


def test_ban_with_counter_logits_equal_a_float64_ban_vqa_forward():
    model = small_ban(use_counter=True, weight_norm=True).double()
    with torch.no_grad():  # learned-looking functions: random positive slopes, first weight 0
        gen = torch.Generator().manual_seed(3)
        for f in model.counter.f:
            f.weight[1:] = torch.rand(16, generator=gen, dtype=torch.float64) + 0.1
    model.eval()
    batch = make_inputs(dim_v=10, grid=4, batch=3)
    batch["boxes"] = boxes_for(batch)
    batch["boxes"][0, :4] = batch["boxes"][0, 4]  # some duplicate boxes
    with torch.no_grad():
        logits = model(**batch)
        q_emb = model.question_encoder(batch["question"], batch["question_len"]).states
        v = batch["image"].flatten(2).transpose(1, 2)
        expected = ban_reference(ban_reference_weights(model), v, q_emb, gamma=3, act=torch.relu,
                                 boxes=batch["boxes"])
    assert_close(logits, expected, rtol=1e-9, atol=1e-11)
