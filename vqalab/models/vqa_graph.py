"""Region- and scene-graph VQA models, from lab note 001 (the ISubGVQA tuning guide).

| name | model |
| --- | --- |
| ``vqa_aoa`` | attention on attention (Huang et al. 2019): AoA refiner over regions, question-guided AoA decoder |
| ``vqa_subgraph`` | ISubGVQA's graph part: question-guided top-k subgraph sampler (IMLE or Gumbel top-k) + multi-head graph attention |
| ``vqa_question_only`` | blind baseline: the question alone (LSTM → MLP); ignores every visual input |

``vqa_aoa`` is an image VQA model like those in ``vqa.py``: it attends over the regions of the
image map, or over precomputed region features (VQA v2 / GQA feature files, ``synthetic_scenes``
with ``inputs: regions``). ``vqa_subgraph`` reads scene graphs (``vqalab.data.graphs``:
``synthetic_scenes`` and ``gqa`` with ``inputs: scene_graph``).

X-VLM, the third backbone of lab note 001, is not here: it needs its pretrained weights, which
cannot be fetched (no network at run time, none stored). Its options (``xvlm_lr``, ``omega_q``,
``omega_v``, ``fusion_ratio``, ``topk``) therefore have no counterpart.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqalab.models import register_model
from vqalab.models.encoders import build_question_encoder
from vqalab.models.layers import ACTIVATIONS, masked_softmax, mlp, real_regions
from vqalab.models.vqa import (
    SMALL_CNN_CHANNELS,
    ActivationName,
    ImageEncoderName,
    QuestionEncoderName,
    VQAModel,
    encoder_kwargs,
    image_regions,
    vqa_builder,
)
from vqalab.registry import ConfigError

SamplerName = Literal["imle", "gumbel"]
BOX_DIM = 4  # (x1, y1, x2, y2) as fractions of the image
MIN_BOX_SIDE = 1e-3  # box sides are clamped to this (a fraction of the image) before dividing by them
MASKED_SCORE = -1e9  # score of padding nodes: ranked last by every sampler (float32: finite)
GUMBEL_EPS = 1e-10  # keeps the logs of the Gumbel noise and of the relaxed top-k finite
# Cap of exp() arguments in the selection-weighted pooling, for terms of unchosen nodes (which are
# multiplied by 0): no inf · 0, and ∂L/∂z of an unchosen node stays bounded (exp(10) ≈ 2e4).
MAX_EXPONENT = 10.0


# --- Attention on attention ----------------------------------------------------------------------


class AttentionOnAttention(nn.Module):
    """AoA (Huang et al. 2019): multi-head attention f_att(Q, K, V) = â, then an information vector
    i = W_i [â; Q] + b_i gated by an attention gate g = σ(W_g [â; Q] + b_g): AoA = g ⊙ i.

    dim: size of queries, keys and values. num_heads: attention heads (must divide dim).
    dropout: on the attention weights.
    """

    def __init__(self, *, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"model.num_heads = {num_heads} does not divide the hidden size {dim}")
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.information = nn.Linear(2 * dim, dim)  # W_i, b_i
        self.gate = nn.Linear(2 * dim, dim)  # W_g, b_g

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(query, keys, keys, need_weights=False)  # â: (B, Tq, dim)
        joint = torch.cat([attended, query], dim=-1)  # (B, Tq, 2·dim)
        return torch.sigmoid(self.gate(joint)) * self.information(joint)


class AoARefinerLayer(nn.Module):
    """One layer of the AoA refiner: x ← LayerNorm(x + dropout(AoA(x, x))), self-attention over regions.

    dim, num_heads: as ``AttentionOnAttention``. dropout: on the attention weights and the residual branch.
    """

    def __init__(self, *, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.aoa = AttentionOnAttention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.aoa(x, x)))  # (B, N, dim)


class AoANet(VQAModel):
    """Regions projected to ``hidden_dim`` and refined by ``aoa_layers`` AoA self-attention layers;
    the question vector queries the refined regions through one more AoA (the question-guided
    decoder step); the attended vector, gated by the question, is classified.

    num_answers: classes. hidden_dim: region, question and AoA size (num_hid). aoa_layers: refiner
    depth. num_heads: attention heads. activation: σ of the projection and classifier.
    dropout: in the AoA layers and the classifier.
    """

    def __init__(self, *, num_answers: int, hidden_dim: int, aoa_layers: int, num_heads: int, activation: str,
                 dropout: float, **encoders):
        super().__init__(**encoders)
        act = ACTIVATIONS[activation]
        self.region_proj = nn.Sequential(nn.Linear(self.image_encoder.out_dim, hidden_dim), act(), nn.Dropout(dropout))
        self.question_proj = nn.Linear(self.question_encoder.out_dim, hidden_dim)
        self.refiner = nn.ModuleList(AoARefinerLayer(dim=hidden_dim, num_heads=num_heads, dropout=dropout)
                                     for _ in range(aoa_layers))
        self.decoder = AttentionOnAttention(dim=hidden_dim, num_heads=num_heads, dropout=dropout)
        self.head = mlp(hidden_dim, hidden_dim, num_answers, dropout, act=act)

    def forward_features(self, image, question, question_len, image_id=None, boxes=None):
        regions = self.region_proj(image_regions(self.encode_image(image, image_id)))  # (B, N, H)
        for layer in self.refiner:
            regions = layer(regions)
        q = self.question_proj(self.question_encoder(question, question_len).vector).unsqueeze(1)  # (B, 1, H)
        attended = self.decoder(q, regions)  # (B, 1, H)
        return (attended * q).squeeze(1)  # (B, H): the question gates the attended image


# --- Differentiable top-k subgraph samplers --------------------------------------------------------


def topk_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, N) scores, (B,) k → (B, N) float 0/1 mask of each row's k highest scores."""
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)  # rank 0 = highest
    return (ranks < k[:, None]).to(scores.dtype)


def gumbel_noise(shape, device, generator=None) -> torch.Tensor:
    u = torch.rand(shape, device=device, generator=generator)
    return -torch.log(-torch.log(u + GUMBEL_EPS) + GUMBEL_EPS)


class IMLETopK(torch.autograd.Function):
    """Implicit MLE (Niepert et al. 2021) for a top-k subset, as ISubGVQA uses it (torch-imle's
    ``TargetDistribution(alpha, beta)``, Gumbel perturbations of scale ``tau``):

        forward:  z = mean_s topk(θ + τ ε_s)
        backward: θ' = α θ − β ∂ℓ/∂z,  ∂ℓ/∂θ = mean_s [topk(θ + τ ε_s) − topk(θ' + τ ε_s)] / β

    with the same noise ε_s in both (one draw per sample s of ``nb_samples``). The 1/β (the paper's
    1/λ) makes the estimate a finite difference on the loss's own scale, whatever β is.

    ℓ is each example's own loss: the training loss is a batch mean L = mean_b ℓ_b, so ∂ℓ_b/∂z_b =
    B ∂L/∂z_b, and the estimate is divided by B again for ∂L/∂θ. So β means the same step whatever
    the batch size; with ∂L/∂z directly, a batch of 64 shrinks the step 64 times, the target top-k
    almost never moves and the scorer learns nothing (on ``synthetic_scenes`` the chosen nodes stay
    at chance).
    """

    @staticmethod
    def forward(ctx, scores, k, noise, alpha, beta, tau):
        # noise: (S, B, N)
        samples = torch.stack([topk_mask(scores + tau * eps, k) for eps in noise])  # (S, B, N)
        ctx.save_for_backward(scores, k, noise, samples)
        ctx.alpha, ctx.beta, ctx.tau = alpha, beta, tau
        return samples.mean(dim=0)

    @staticmethod
    def backward(ctx, grad_z):
        scores, k, noise, samples = ctx.saved_tensors
        batch = scores.shape[0]
        target = ctx.alpha * scores - ctx.beta * batch * grad_z  # θ' from each example's own ∂ℓ/∂z
        target_samples = torch.stack([topk_mask(target + ctx.tau * eps, k) for eps in noise])
        return (samples - target_samples).mean(dim=0) / (ctx.beta * batch), None, None, None, None, None


def relaxed_topk(scores: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """Continuous k-hot relaxation (Xie & Ermon 2019): k rounds of a softmax with temperature τ,
    each round's mass removed from the next: (B, N) → (B, N), rows summing to k.

    Computed in float64: the removal term log(1 − p) has the derivative −1/(1 − p), which the
    softmax's backward multiplies by (1 − p) again. In float32 the rounding error of that product,
    for a node a round has all but chosen (1 − p ≈ 1e-10), is about 1/(1 − p) · 6e-8: scorer
    gradients in the thousands that wreck training within a few epochs.
    """
    dtype = scores.dtype
    scores = scores.double()
    khot = torch.zeros_like(scores)
    onehot = torch.zeros_like(scores)
    for _ in range(k):
        scores = scores + torch.log((1.0 - onehot).clamp_min(GUMBEL_EPS))
        onehot = torch.softmax(scores / tau, dim=1)
        khot = khot + onehot
    return khot.to(dtype)


class SubgraphSampler(nn.Module):
    """Picks ``sample_k`` nodes per graph from question-conditioned node scores, differentiably.

    sampler: imle (``IMLETopK``) or gumbel (Gumbel top-k: hard top-k of θ + Gumbel noise forward,
    the gradient of its continuous relaxation ``relaxed_topk`` backward, straight-through).
    sample_k: nodes kept (fewer when a graph has fewer nodes). nb_samples: noise samples averaged
    per forward pass (training). tau: noise scale (imle) or relaxation temperature (gumbel).
    alpha, beta: IMLE target distribution θ' = α θ − β ∂L/∂z.
    In evaluation mode the choice is deterministic: the top-k scores, no noise.
    """

    def __init__(self, *, sampler: str, sample_k: int, nb_samples: int, tau: float, alpha: float, beta: float):
        super().__init__()
        self.sampler, self.sample_k, self.nb_samples = sampler, sample_k, nb_samples
        self.tau, self.alpha, self.beta = tau, alpha, beta

    def forward(self, scores: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """(B, N) scores, (B, N) bool mask of real nodes → (B, N) selection in [0, 1] (0/1 with one sample)."""
        scores = scores.float().masked_fill(~node_mask, MASKED_SCORE)  # float32: MASKED_SCORE stays finite
        k = node_mask.sum(dim=1).clamp(max=self.sample_k)  # (B,)
        if not self.training:
            return topk_mask(scores, k)
        noise = gumbel_noise((self.nb_samples, *scores.shape), scores.device)  # (S, B, N)
        if self.sampler == "imle":
            return IMLETopK.apply(scores, k, noise, self.alpha, self.beta, self.tau)
        hard, soft = [], []
        for eps in noise:
            perturbed = scores + eps
            hard.append(topk_mask(perturbed, k))
            soft.append(relaxed_topk(perturbed, self.sample_k, self.tau) * node_mask)
        hard, soft = torch.stack(hard).mean(dim=0), torch.stack(soft).mean(dim=0)
        return hard + (soft - soft.detach())  # straight-through: exactly the hard values, relaxed gradient


# --- Multi-head graph attention --------------------------------------------------------------------


class GraphAttentionLayer(nn.Module):
    """Multi-head graph attention with relation labels (GAT, Veličković et al. 2018, with edge
    features), guided by the question: for an edge j → i with relation r and instruction q (a
    question vector),

        e_ij^h = LeakyReLU(a_h · [W_h x_i ; W_h x_j ; U_h r]) + (W_h x_j) · (Q_h q) / √d
        α_ij^h = softmax_j(e_ij^h)   (over the edges into i)
        x_i ← LayerNorm(x_i + dropout(σ(W_o concat_h Σ_j α_ij^h (W_h x_j + U_h r))))

    The question term (ISubGVQA's instruction) lets each node attend to the neighbours the
    question is about. Every node also has a self-loop (relation embedding zero).
    Inputs are flat over the whole batch: x (B·N, dim) nodes, src, dst (E,) node indices, rel (E, dim)
    relation embeddings, question (B·N, dim) the instruction of each node's graph.
    dim: node size. num_heads: heads (must divide dim); d = dim / num_heads. activation: σ.
    dropout: on the attention weights and the update.
    """

    def __init__(self, *, dim: int, num_heads: int, activation: str, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"model.num_heads = {num_heads} does not divide general_hidden_dim {dim}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.node_proj = nn.Linear(dim, dim, bias=False)  # W_h, all heads
        self.rel_proj = nn.Linear(dim, dim, bias=False)  # U_h, all heads
        self.att_dst = nn.Parameter(torch.randn(num_heads, self.head_dim) / self.head_dim ** 0.5)  # a_h, the x_i part
        self.att_src = nn.Parameter(torch.randn(num_heads, self.head_dim) / self.head_dim ** 0.5)  # the x_j part
        self.att_rel = nn.Parameter(torch.randn(num_heads, self.head_dim) / self.head_dim ** 0.5)  # the r part
        self.question_proj = nn.Linear(dim, dim)  # Q_h, all heads
        self.out = nn.Linear(dim, dim)  # W_o
        self.act = ACTIVATIONS[activation]()
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, rel: torch.Tensor,
                question: torch.Tensor) -> torch.Tensor:
        n, heads, d = x.shape[0], self.num_heads, self.head_dim
        h = self.node_proj(x).view(n, heads, d)  # (B·N, heads, d)
        r = self.rel_proj(rel).view(-1, heads, d)  # (E, heads, d)
        guide = self.question_proj(question).view(n, heads, d)  # (B·N, heads, d)
        logits = F.leaky_relu((h[dst] * self.att_dst).sum(-1) + (h[src] * self.att_src).sum(-1)
                              + (r * self.att_rel).sum(-1), negative_slope=0.2)  # (E, heads)
        logits = logits + (h[src] * guide[dst]).sum(-1) / d ** 0.5
        # Softmax over the edges into each node, shifted by each node's maximum (every node has its
        # self-loop, so each maximum is finite and the largest term is exp(0) = 1).
        top = torch.full((n, heads), float("-inf"), dtype=logits.dtype, device=x.device)
        top = top.scatter_reduce(0, dst[:, None].expand(-1, heads), logits, reduce="amax", include_self=True)
        weights = torch.exp(logits - top[dst].detach())
        total = torch.zeros(n, heads, dtype=logits.dtype, device=x.device).index_add(0, dst, weights)
        weights = self.dropout(weights / total[dst])  # α: (E, heads)
        messages = weights.unsqueeze(-1) * (h[src] + r)  # (E, heads, d)
        update = torch.zeros(n, heads, d, dtype=messages.dtype, device=x.device).index_add(0, dst, messages)
        return self.norm(x + self.dropout(self.act(self.out(update.reshape(n, heads * d)))))


def flat_edges(node_mask: torch.Tensor, edges: torch.Tensor,
               edge_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The real edges over the flattened (B·N) nodes, plus one self-loop per real node.

    node_mask (B, N) bool; edges (B, E, 3) [src, dst, rel]; edge_mask (B, E) bool.
    Returns src, dst (E',) flat node indices and rel (E',) labels (self-loops: 0, the padding label,
    a zero embedding).
    """
    b, n = node_mask.shape
    offset = (torch.arange(b, device=edges.device) * n)[:, None]  # (B, 1)
    src, dst, rel = edges.unbind(-1)  # each (B, E)
    loops = node_mask.flatten().nonzero().squeeze(1)
    return (torch.cat([(src + offset)[edge_mask], loops]), torch.cat([(dst + offset)[edge_mask], loops]),
            torch.cat([rel[edge_mask], torch.zeros_like(loops)]))


def region_edges(node_mask: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every ordered pair of real regions as an edge, plus one self-loop per real region, over the
    flattened (B·N) nodes, each with its box geometry (Hu et al. 2018's relative position):

        g_ij = ((cx_j − cx_i) / w_i, (cy_j − cy_i) / h_i, log(w_j / w_i), log(h_j / h_i))

    for the edge j → i (zero on self-loops). node_mask (B, N) bool; boxes (B, N, 4) x1, y1, x2, y2.
    Returns src, dst (E',) flat node indices and geometry (E', 4).
    """
    n = node_mask.shape[1]
    pairs = node_mask[:, :, None] & node_mask[:, None, :]  # (B, N_dst, N_src), self-loops included
    batch, dst, src = pairs.nonzero(as_tuple=True)
    size = (boxes[..., 2:] - boxes[..., :2]).clamp_min(MIN_BOX_SIDE)  # (B, N, 2) w, h
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size_i, size_j = size[batch, dst], size[batch, src]
    geometry = torch.cat([(centre[batch, src] - centre[batch, dst]) / size_i, torch.log(size_j / size_i)], dim=-1)
    return batch * n + src, batch * n + dst, geometry


class SceneGraphEncoder(nn.Module):
    """Node vectors from the scene graph: [E(name); mean of E(attributes); box] → linear → σ.

    embed: the word embedding shared with the question (labels are vocabulary entries).
    dim: output node size. activation: σ. dropout: on the node vectors.
    """

    def __init__(self, *, embed: nn.Embedding, dim: int, activation: str, dropout: float):
        super().__init__()
        self.embed = embed
        self.proj = nn.Linear(2 * embed.embedding_dim + BOX_DIM, dim)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)

    def forward(self, names: torch.Tensor, attrs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        attr_count = (attrs > 0).sum(dim=-1, keepdim=True).clamp(min=1)  # (B, N, 1)
        attr_mean = self.embed(attrs).sum(dim=2) / attr_count  # padding embeds to zero: (B, N, E)
        nodes = torch.cat([self.embed(names), attr_mean, boxes], dim=-1)  # (B, N, 2E + 4)
        return self.dropout(self.act(self.proj(nodes)))  # (B, N, dim)


class NodeScorer(nn.Module):
    """Question-conditioned node scores s_i = v · σ(W_n x_i ⊙ W_q q): (B, N, dim), (B, dim) → (B, N).

    dim: node and question size. activation: σ.
    """

    def __init__(self, *, dim: int, activation: str):
        super().__init__()
        self.node_proj = nn.Linear(dim, dim)  # W_n
        self.question_proj = nn.Linear(dim, dim)  # W_q
        self.score = nn.Linear(dim, 1)  # v (and a bias)
        self.act = ACTIVATIONS[activation]()

    def forward(self, nodes: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.score(self.act(self.node_proj(nodes) * self.question_proj(q).unsqueeze(1))).squeeze(-1)


class QuestionInstructions(nn.Module):
    """One instruction vector per graph-attention layer, read from the question's tokens (ISubGVQA's
    program decoder gives each MGAT layer its own instruction; here one attention step per layer):

        instruction_l = W_o Σ_t softmax_t(P_l q · s_t / √D) s_t

    so each layer can follow another part of the question ("the red circle", then "left of").
    dim: question vector and instruction size. token_dim: token state size D. layers: instructions.
    forward(q (B, dim), states (B, T, D), mask (B, T) bool) → list of ``layers`` (B, dim) tensors.
    """

    def __init__(self, *, dim: int, token_dim: int, layers: int):
        super().__init__()
        self.queries = nn.ModuleList(nn.Linear(dim, token_dim) for _ in range(layers))  # P_l
        self.out = nn.Linear(token_dim, dim)  # W_o

    def forward(self, q: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        instructions = []
        for query in self.queries:
            logits = (states @ query(q).unsqueeze(-1)).squeeze(-1) / states.shape[-1] ** 0.5  # (B, T)
            weights = masked_softmax(logits, mask, dim=1)
            instructions.append(self.out((weights.unsqueeze(-1) * states).sum(dim=1)))
        return instructions


def selection_pool(nodes: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                   selection: torch.Tensor) -> torch.Tensor:
    """Attention pooling over the chosen nodes: w_i = z_i exp(s_i) / Σ_j z_j exp(s_j) over the real
    nodes, pooled = Σ_i w_i x_i. With a 0/1 selection z only chosen nodes are pooled, yet ∂L/∂z_i
    says what adding node i would change. nodes (B, N, H), scores, selection (B, N), mask (B, N) bool
    → (B, H)."""
    # Shift by the largest chosen score (not the largest of all), so the chosen terms cannot underflow.
    scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.masked_fill(selection <= 0, float("-inf")).amax(dim=1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()  # a constant shift
    weights = torch.exp((scores - top).clamp(max=MAX_EXPONENT)) * selection  # (B, N)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return (weights.unsqueeze(-1) * nodes).sum(dim=1)


class SubgraphVQA(nn.Module):
    """ISubGVQA's graph part: the scene-graph encoder embeds the nodes; ``mgat_layers``
    graph-attention layers, each guided by its own instruction read from the question
    (``QuestionInstructions``), put each node in the context of its relations; a
    question-conditioned scorer picks ``sample_k`` nodes (``SubgraphSampler``); the chosen nodes
    alone are pooled, with attention weights softmax(s'_i + s_i), s' from a second scorer
    (``selection_pool``); [pooled; question] is classified. So the answer reads the chosen
    subgraph only, which is what makes the choice an explanation.

    The graph attention runs over the whole graph, as in ISubGVQA, where the sampler's mask
    enters at the pooling. Passing messages from chosen nodes only was tried: on
    ``synthetic_scenes`` the Gumbel top-k estimator then diverged (gradients in the thousands
    through the masked attention) and IMLE learned more slowly. One instruction per layer rather
    than the question vector for all raised accuracy there from 0.61 to 0.74 (sample_k 3).

    With ``use_mgat`` False there is no graph attention at all (the non-graph baseline): nodes are
    scored as embedded and the chosen ones pooled, relations unused.

    Region features instead of a scene graph (``image_dim`` set): each region is a node (its
    features, box included, projected), every pair of regions an edge whose relation vector is
    their box geometry (``region_edges``), as relation networks over detector regions do.

    forward(question, question_len, node_names, node_attrs, node_boxes, node_mask, edges, edge_mask,
    image_id=None, return_selection=False), or forward(question, question_len, image=regions,
    boxes=boxes, ...) → logits (B, num_answers), and with ``return_selection`` also the (B, N)
    selection (1 at the chosen nodes, in node order of the graph or regions). The last forward
    pass's selection is also kept in ``self.last_selection`` for interpretation.
    """

    def __init__(self, *, vocab_size: int, num_answers: int, embed_dim: int, hidden_dim: int, question_encoder: str,
                 use_mgat: bool, mgat_layers: int, num_heads: int, sampler: str, sample_k: int, nb_samples: int,
                 tau: float, alpha: float, beta: float, activation: str, dropout: float, image_dim: int | None = None):
        super().__init__()
        self.question_encoder = build_question_encoder(question_encoder, vocab_size=vocab_size, embed_dim=embed_dim,
                                                       hidden_dim=hidden_dim)
        self.question_proj = nn.Linear(self.question_encoder.out_dim, hidden_dim)
        self.reads_regions = image_dim is not None
        # Without graph attention relations are unused and get no parameters.
        if self.reads_regions:  # region features (and their boxes) → nodes; box geometry → relations
            self.region_encoder = nn.Sequential(nn.Linear(image_dim, hidden_dim), ACTIVATIONS[activation](),
                                                nn.Dropout(dropout))
            self.geometry_proj = nn.Linear(BOX_DIM, hidden_dim, bias=False) if use_mgat else None
        else:  # scene graph: labels embedded like question words
            self.graph_encoder = SceneGraphEncoder(embed=self.question_encoder.embed, dim=hidden_dim,
                                                   activation=activation, dropout=dropout)
            self.relation_proj = nn.Linear(embed_dim, hidden_dim, bias=False) if use_mgat else None
        gat = {"dim": hidden_dim, "num_heads": num_heads, "activation": activation, "dropout": dropout}
        self.mgat = nn.ModuleList(GraphAttentionLayer(**gat) for _ in range(mgat_layers if use_mgat else 0))
        self.instructions = QuestionInstructions(dim=hidden_dim, token_dim=self.question_encoder.out_dim,
                                                 layers=mgat_layers) if use_mgat else None
        self.node_scorer = NodeScorer(dim=hidden_dim, activation=activation)
        self.pool_scorer = NodeScorer(dim=hidden_dim, activation=activation)
        self.sampler = SubgraphSampler(sampler=sampler, sample_k=sample_k, nb_samples=nb_samples, tau=tau,
                                       alpha=alpha, beta=beta)
        self.head = mlp(2 * hidden_dim, hidden_dim, num_answers, dropout, act=ACTIVATIONS[activation])
        self.last_selection: torch.Tensor | None = None

    def encode_nodes(self, graph: dict) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
        """Node vectors (B, N, H), the mask of real nodes (B, N) and, with graph attention, the edges
        (src, dst, relation vectors (E', H)), from a scene graph or from region features."""
        if self.reads_regions:
            regions = image_regions(graph["image"])  # (B, N, image_dim)
            node_mask = real_regions(regions)
            nodes = self.region_encoder(regions)
            if not self.mgat:
                return nodes, node_mask, None
            src, dst, geometry = region_edges(node_mask, graph["boxes"].to(regions.dtype))
            return nodes, node_mask, (src, dst, self.geometry_proj(geometry))
        node_mask = graph["node_mask"]
        nodes = self.graph_encoder(graph["node_names"], graph["node_attrs"], graph["node_boxes"])
        if not self.mgat:
            return nodes, node_mask, None
        src, dst, rel = flat_edges(node_mask, graph["edges"], graph["edge_mask"])
        return nodes, node_mask, (src, dst, self.relation_proj(self.question_encoder.embed(rel)))

    def forward_features(self, question, question_len, graph: dict) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.question_encoder(question, question_len)
        q = self.question_proj(encoded.vector)  # (B, H)
        nodes, node_mask, edges = self.encode_nodes(graph)  # (B, N, H), (B, N)
        if self.mgat:
            b, n, h = nodes.shape
            src, dst, rel = edges
            flat = nodes.reshape(b * n, h)
            for layer, instruction in zip(self.mgat, self.instructions(q, encoded.states, encoded.mask)):
                flat = layer(flat, src, dst, rel, instruction.repeat_interleave(n, dim=0))  # each node's instruction
            nodes = flat.view(b, n, h)
        scores = self.node_scorer(nodes, q)  # (B, N)
        selection = self.sampler(scores, node_mask).to(nodes.dtype)  # (B, N)
        # Pooling logits: the second scorer's plus those that chose the nodes, so the node scorer
        # also learns from the answer directly, not only through the sampler.
        pool_scores = self.pool_scorer(nodes, q) + scores.to(nodes.dtype)  # (B, N)
        pooled = selection_pool(nodes, pool_scores, node_mask, selection)  # (B, H)
        return torch.cat([pooled, q], dim=1), selection

    def forward(self, question, question_len, node_names=None, node_attrs=None, node_boxes=None, node_mask=None,
                edges=None, edge_mask=None, image=None, boxes=None, image_id=None, return_selection: bool = False):
        if self.reads_regions:
            if image is None or boxes is None:
                raise ValueError("vqa_subgraph built for region features (image_dim set) needs the batch's 'image' "
                                 "regions and their 'boxes' (synthetic_scenes or gqa with inputs: regions, vqa_v2 "
                                 "with .npz region files)")
            graph = {"image": image, "boxes": boxes}
        else:
            if node_names is None:
                raise ValueError("vqa_subgraph needs scene-graph inputs (node_names, …; data inputs: scene_graph), "
                                 "or region features: then the data sets image_dim")
            graph = {"node_names": node_names, "node_attrs": node_attrs, "node_boxes": node_boxes,
                     "node_mask": node_mask, "edges": edges, "edge_mask": edge_mask}
        features, selection = self.forward_features(question, question_len, graph)
        self.last_selection = selection.detach()
        logits = self.head(features)
        return (logits, selection) if return_selection else logits


class QuestionOnly(nn.Module):
    """Blind baseline: question vector → MLP. Takes and ignores the visual inputs of any VQA data
    set (image, regions or scene graph), so it trains on the same data as the model it bounds.

    vocab_size, num_answers: from the data. question_encoder, embed_dim, question_dim: as the VQA
    models. hidden_dim: MLP hidden size. dropout: before the last layer.
    """

    def __init__(self, *, vocab_size: int, num_answers: int, question_encoder: str, embed_dim: int, question_dim: int,
                 hidden_dim: int, dropout: float):
        super().__init__()
        self.question_encoder = build_question_encoder(question_encoder, vocab_size=vocab_size, embed_dim=embed_dim,
                                                       hidden_dim=question_dim)
        self.head = mlp(self.question_encoder.out_dim, hidden_dim, num_answers, dropout)

    def forward(self, question: torch.Tensor, question_len: torch.Tensor, **visual_inputs) -> torch.Tensor:
        return self.head(self.question_encoder(question, question_len).vector)


# --- Registered builders -------------------------------------------------------------------------


@vqa_builder
def vqa_aoa(
    *,
    vocab_size: int,
    num_answers: int,
    image_encoder: ImageEncoderName = "small_cnn",
    image_weights: str | None = None,
    freeze_image: bool = False,
    cnn_channels: tuple[int, ...] = SMALL_CNN_CHANNELS,
    pool_image: bool = False,
    image_dim: int | None = None,
    question_encoder: QuestionEncoderName = "gru",
    embed_dim: int = 64,
    question_dim: int = 64,
    embedding_weights: str | None = None,
    freeze_embedding: bool = False,
    hidden_dim: int = 64,
    aoa_layers: int = 2,
    num_heads: int = 4,
    activation: ActivationName = "swish",
    dropout: float = 0.1,
) -> VQAModel:
    """Attention on attention (AoA, Huang et al. 2019) over image regions: each refiner layer is
    multi-head self-attention â = MHA(x, x, x), an information vector i = W_i[â; x] + b_i gated by
    g = σ(W_g[â; x] + b_g), then x ← LayerNorm(x + g ⊙ i); the question vector queries the refined
    regions with one more AoA; the attended vector times the question is classified.
    Small defaults for the CPU; lab note 001's values (``params/train/gqa_aoa.yaml``,
    ``vqa_v2_aoa.yaml``): AOA_layers 6 (range 4-8; the VQA preset 8), num_hid 1024 (512-2048),
    activation swish (relu, swish), dropout 0.45 (0.3-0.6).

    hidden_dim: region, question and AoA size (num_hid). aoa_layers: refiner depth (AOA_layers).
    num_heads: attention heads (must divide hidden_dim; AoANet uses 8). activation: σ of the region
    projection and the classifier. dropout: in the AoA layers and the classifier.
    """
    if aoa_layers < 0:
        raise ConfigError(f"model.aoa_layers = {aoa_layers}: expected 0 or more refiner layers")
    return AoANet(num_answers=num_answers, hidden_dim=hidden_dim, aoa_layers=aoa_layers, num_heads=num_heads,
                  activation=activation, dropout=dropout, **encoder_kwargs(locals()))


@register_model
def vqa_subgraph(
    *,
    vocab_size: int,
    num_answers: int,
    question_encoder: QuestionEncoderName = "gru",
    embed_dim: int = 300,
    general_hidden_dim: int = 300,
    use_mgat: bool = True,
    mgat_layers: int = 4,
    num_heads: int = 4,
    sampler: SamplerName = "imle",
    sample_k: int = 2,
    nb_samples: int = 1,
    tau: float = 1.0,
    alpha: float = 1.0,
    beta: float = 10.0,
    activation: ActivationName = "swish",
    dropout: float = 0.45,
    image_dim: int | None = None,
) -> nn.Module:
    """ISubGVQA's question-guided subgraph VQA over scene graphs (``inputs: scene_graph`` data), or
    over region features (``inputs: regions``; VQA v2 with ``.npz`` region files).

    Nodes: object name and attributes embedded (the question's word embedding) with the box
    geometry; edges: the relations, labels embedded likewise (regions: projected features, box
    geometry). With ``use_mgat``, ``mgat_layers`` multi-head graph-attention layers, each guided by
    its own instruction (an attention over the question's tokens), put each node in the context of
    its relations. A question-conditioned scorer s_i = v · σ(W_n x_i ⊙ W_q q) ranks the nodes; a
    differentiable top-k sampler keeps ``sample_k`` of them (IMLE or Gumbel top-k); only the chosen
    nodes are pooled (weights softmax(s' + s), s' from a second scorer) and classified with the
    question, so the answer reads the chosen subgraph alone. The chosen nodes are returned by
    ``model(..., return_selection=True)`` and kept in ``model.last_selection``. Defaults are lab
    note 001's (ranges in brackets).

    vocab_size, num_answers: set from the data (question words and graph labels; answers).
    question_encoder: gru or lstm (the question vector is the last state) or mean.
    embed_dim: word and label embedding size (300: GloVe size in ISubGVQA).
    general_hidden_dim: node, question and graph-attention size [256-512; the VQA preset 512].
    use_mgat: graph attention before the choice; False: the non-graph baseline (chosen nodes
        pooled without message passing; lab note 001's CLI default is 0).
    mgat_layers: graph-attention layers [2-6; the VQA preset 6].
    num_heads: graph-attention heads (must divide general_hidden_dim).
    sampler: imle or gumbel (the guide's sampler_type).
    sample_k: nodes kept per graph [1-5].
    nb_samples: noise samples averaged per training step [1-3].
    tau: noise scale (imle) or relaxation temperature (gumbel) [0.5-2.0].
    alpha: IMLE target θ' = α θ − β ∂ℓ/∂z, the α [0.5-2.0].
    beta: the β of the IMLE target, per example's loss ℓ (``IMLETopK``) [5.0-20.0].
    activation: σ throughout (swish; relu).
    dropout: on node vectors, graph-attention updates and the classifier [0.3-0.6].
    image_dim: set from region data (features + box per region): regions are the nodes and their
        box geometry the relations; None: scene-graph data.
    """
    for key, value in (("general_hidden_dim", general_hidden_dim), ("sample_k", sample_k), ("nb_samples", nb_samples)):
        if value < 1:
            raise ConfigError(f"model.{key} = {value}: expected at least 1")
    if use_mgat and mgat_layers < 1:
        raise ConfigError(f"model.mgat_layers = {mgat_layers}: expected at least 1 with use_mgat (or set use_mgat: false)")
    if tau <= 0:
        raise ConfigError(f"model.tau = {tau}: expected a positive temperature")
    return SubgraphVQA(vocab_size=vocab_size, num_answers=num_answers, embed_dim=embed_dim,
                       hidden_dim=general_hidden_dim, question_encoder=question_encoder, use_mgat=use_mgat,
                       mgat_layers=mgat_layers, num_heads=num_heads, sampler=sampler, sample_k=sample_k,
                       nb_samples=nb_samples, tau=tau, alpha=alpha, beta=beta, activation=activation, dropout=dropout,
                       image_dim=image_dim)


@register_model
def vqa_question_only(
    *,
    vocab_size: int,
    num_answers: int,
    question_encoder: QuestionEncoderName = "lstm",
    embed_dim: int = 64,
    question_dim: int = 128,
    hidden_dim: int = 128,
    dropout: float = 0.0,
) -> nn.Module:
    """Question-only baseline: question encoder → MLP; every visual input is ignored, so it runs on
    any VQA data set and measures what the questions alone give away.

    vocab_size, num_answers: set from the data. question_encoder: mean, lstm or gru.
    embed_dim: word embedding size. question_dim: lstm/gru state size.
    hidden_dim: MLP hidden size. dropout: before the last layer.
    """
    return QuestionOnly(vocab_size=vocab_size, num_answers=num_answers, question_encoder=question_encoder,
                        embed_dim=embed_dim, question_dim=question_dim, hidden_dim=hidden_dim, dropout=dropout)
