"""Blocks shared by every model family: defined once, composed by the model files."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear → activation → dropout → linear: the classifier head of every VQA model."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), act(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))


# --- Transformer blocks (ViT and CaiT class attention) ---------------------------------------------

LAYER_NORM_EPS = 1e-6  # timm's ViT LayerNorm
VIT_INIT_STD = 0.02  # timm's ViT: truncated-normal std of linear weights and embeddings


def init_vit_weights(module: nn.Module) -> None:
    """timm's ViT initialisation, for ``module.apply``: truncated-normal linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=VIT_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DropPath(nn.Module):
    """Stochastic depth: during training, drop a residual branch for whole samples with probability
    ``rate`` and scale the kept ones by 1 / (1 - rate). rate: drop probability (0: identity)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, …)
        return x * mask / keep


class FeedForward(nn.Module):
    """Transformer MLP: linear → GELU → linear. dim: token size. hidden_dim: inner size (4 × dim)."""

    def __init__(self, *, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens: (B, T, dim) → (B, T, dim).

    dim: token size. num_heads: heads (must divide dim). attn_drop: dropout on attention weights.
    One fused ``qkv`` projection (rows: queries, keys, values) and an output ``proj``.
    """

    def __init__(self, *, dim: int, num_heads: int, attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide dim {dim}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, heads, T, d_head)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention of (B, Tq, dim) queries over (B, T, dim) keys/values → (B, Tq, dim)."""
        b, tq, d = q.shape
        out = F.scaled_dot_product_attention(
            self.split_heads(q), self.split_heads(k), self.split_heads(v),
            dropout_p=self.attn_drop if self.training else 0.0)  # (B, heads, Tq, d_head)
        return self.proj(out.transpose(1, 2).reshape(b, tq, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, T, dim)
        return self.attend(q, k, v)


class ClassAttention(SelfAttention):
    """CaiT class attention: the query comes from the class token ``x[:, 0]`` only, keys and values
    from all tokens: (B, T, dim) → (B, 1, dim). Same parameters as ``SelfAttention``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        w_q, w_kv = self.qkv.weight.split([d, 2 * d])  # the query rows, then keys and values
        b_q, b_kv = self.qkv.bias.split([d, 2 * d])
        q = F.linear(x[:, :1], w_q, b_q)  # (B, 1, dim)
        k, v = F.linear(x, w_kv, b_kv).chunk(2, dim=-1)  # each (B, T, dim)
        return self.attend(q, k, v)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block over all tokens: x + attn(norm1(x)), then x + mlp(norm2(x)).

    dim: token size. num_heads: attention heads. mlp_ratio: MLP hidden size / dim.
    attn_drop: dropout on attention weights. drop_path: stochastic-depth rate of both branches.
    """

    attention_class = SelfAttention

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = self.attention_class(dim=dim, num_heads=num_heads, attn_drop=attn_drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(dim=dim, hidden_dim=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))  # (B, T, dim)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ClassAttentionBlock(TransformerBlock):
    """CaiT class-attention block (without LayerScale): updates the class token ``x[:, 0]`` only,
    attending over all tokens; the MLP runs on the class token; the other tokens pass through
    unchanged. Same parameters and arguments as ``TransformerBlock``."""

    attention_class = ClassAttention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1] + self.drop_path(self.attn(self.norm1(x)))  # (B, 1, dim)
        cls = cls + self.drop_path(self.mlp(self.norm2(cls)))
        return torch.cat([cls, x[:, 1:]], dim=1)  # (B, T, dim)


# --- VQA attention and fusion blocks -------------------------------------------------------------

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "swish": nn.SiLU}


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax along ``dim`` giving zero weight where ``mask`` (bool, broadcastable) is False."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=dim)


def real_regions(regions: torch.Tensor) -> torch.Tensor:
    """(B, N, D) region features → (B, N) bool, False at all-zero regions (the padding of region
    features, as ban-vqa treats it)."""
    return regions.abs().sum(dim=-1) > 0


class SpatialGate(nn.Module):
    """Sigmoid spatial attention (the lab's model 3): a 1×1 convolution scores each position of the
    image map, its sigmoid weights the position, positions are averaged: (B, D, h, w) → (B, D).

    dim: channels D of the image map.
    """

    def __init__(self, *, dim: int):
        super().__init__()
        self.score = nn.Conv2d(dim, 1, kernel_size=1)

    def forward(self, image_map: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.score(image_map))  # (B, 1, h, w), each position independently in (0, 1)
        return (image_map * gate).mean(dim=(2, 3))


class AttentionPool(nn.Module):
    """Softmax attention pooling over a sequence (the lab's model 3 variant over LSTM states): a
    linear layer scores each state, a softmax over the real tokens weights them:
    (B, T, D) states, (B, T) mask → (B, D).

    dim: state size D.
    """

    def __init__(self, *, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = masked_softmax(self.score(states).squeeze(-1), mask, dim=1)  # (B, T)
        return (weights.unsqueeze(-1) * states).sum(dim=1)


class StackedAttentionHop(nn.Module):
    """One attention layer of SAN (Yang et al. 2016), for regions v_I (B, N, d) and query u (B, d):

        h_A = tanh(W_I v_I ⊕ (W_Q u + b_A)),  p_I = softmax(W_P h_A + b_P),  u' = Σ_i p_I,i v_I,i + u

    where ⊕ adds the question term to every region. Returns u' (B, d) and p_I (B, N).
    dim: size d of regions and query. att_dim: size k of h_A. dropout: on h_A before W_P.
    """

    def __init__(self, *, dim: int, att_dim: int, dropout: float = 0.0):
        super().__init__()
        self.image_proj = nn.Linear(dim, att_dim, bias=False)  # W_I
        self.query_proj = nn.Linear(dim, att_dim)  # W_Q; its bias is b_A
        self.score = nn.Linear(att_dim, 1)  # W_P, b_P
        self.dropout = nn.Dropout(dropout)

    def forward(self, regions: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.image_proj(regions) + self.query_proj(query).unsqueeze(1))  # (B, N, k)
        p = torch.softmax(self.score(self.dropout(h)).squeeze(-1), dim=1)  # (B, N)
        attended = (p.unsqueeze(-1) * regions).sum(dim=1)  # ṽ_I: (B, d)
        return attended + query, p


class TuckerFusion(nn.Module):
    """MUTAN fusion (Ben-younes et al. 2017; vqa.pytorch ``MutanFusion``): a Tucker decomposition
    whose core has rank R,

        x_v = σ(W_v drop(v)),  x_q = σ(W_q drop(q)),  z = Σ_r (W_hq^r drop_h(x_q)) ⊙ (W_hv^r drop_h(x_v))

    v (…, v_glimpses·dim_v) and q (…, dim_q) with leading dimensions that broadcast → (…, dim_mm).
    z has no activation (the MUTAN options set none). With ``v_glimpses`` G > 1, v holds G
    attended image vectors side by side and W_v is block-diagonal: each glimpse has its own
    Linear(dim_v → dim_hv / G) and tanh, and the G outputs are concatenated (vqa.pytorch
    ``list_linear_v_fusion``).

    dim_v, dim_q: input sizes (dim_v per glimpse). dim_hv, dim_hq: sizes of x_v, x_q (G divides
    dim_hv). dim_mm: output size. rank: R. dropout_in: dropout on v and q. dropout_hidden: dropout
    on x_v and x_q (one mask for all r; vqa.pytorch draws one per r, at rate 0 in its options).
    activation: σ (tanh in MUTAN). v_glimpses: G.
    """

    def __init__(self, *, dim_v: int, dim_q: int, dim_hv: int, dim_hq: int, dim_mm: int, rank: int,
                 dropout_in: float = 0.0, dropout_hidden: float = 0.0, activation: str = "tanh",
                 v_glimpses: int = 1):
        super().__init__()
        if dim_hv % v_glimpses:
            raise ValueError(f"dim_hv {dim_hv} is not divisible by the {v_glimpses} glimpses")
        self.rank, self.dim_mm, self.v_glimpses = rank, dim_mm, v_glimpses
        self.linear_v = nn.ModuleList(nn.Linear(dim_v, dim_hv // v_glimpses) for _ in range(v_glimpses))
        self.linear_q = nn.Linear(dim_q, dim_hq)
        self.rank_v = nn.Linear(dim_hv, rank * dim_mm)  # the R matrices W_hv^r, stacked
        self.rank_q = nn.Linear(dim_hq, rank * dim_mm)  # the R matrices W_hq^r, stacked
        self.act = ACTIVATIONS[activation]()
        self.dropout_in = nn.Dropout(dropout_in)
        self.dropout_hidden = nn.Dropout(dropout_hidden)

    def forward(self, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        glimpses = self.dropout_in(v).chunk(self.v_glimpses, dim=-1)  # G × (…, dim_v)
        x_v = torch.cat([self.act(linear(g)) for linear, g in zip(self.linear_v, glimpses)], dim=-1)  # (…, dim_hv)
        x_q = self.act(self.linear_q(self.dropout_in(q)))  # (…, dim_hq)
        z_v = self.rank_v(self.dropout_hidden(x_v)).unflatten(-1, (self.rank, self.dim_mm))  # (…, R, dim_mm)
        z_q = self.rank_q(self.dropout_hidden(x_q)).unflatten(-1, (self.rank, self.dim_mm))
        return (z_v * z_q).sum(dim=-2)  # (…, dim_mm): the R rank-one terms summed


def linear(in_dim: int, out_dim: int, weight_norm: bool = False) -> nn.Linear:
    """nn.Linear, optionally weight-normalised as in ban-vqa (one scale g for the whole matrix,
    ``dim=None``); the effective ``.weight`` keeps its (out_dim, in_dim) shape."""
    layer = nn.Linear(in_dim, out_dim)
    return nn.utils.parametrizations.weight_norm(layer, dim=None) if weight_norm else layer


def projection(in_dim: int, out_dim: int, activation: str | None, dropout: float,
               weight_norm: bool = False) -> nn.Sequential:
    """Dropout → linear → activation (None: no activation): ban-vqa's one-layer ``FCNet``."""
    layers = [nn.Dropout(dropout), linear(in_dim, out_dim, weight_norm)]
    if activation is not None:
        layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class BilinearAttentionMap(nn.Module):
    """BAN bilinear attention maps (Kim et al. 2018; ban-vqa ``BiAttention``), one per glimpse g:

        A_g = softmax over all (region, token) pairs of  (p_g ∘ drop(σ(U v_n)))ᵀ σ(W q_t) + b_g

    regions v (B, N, dim_v), token states q (B, T, dim_q), token mask (B, T) → the maps A and
    their logits, each (B, G, N, T) (the counting module reads the logits). Padded tokens and all-zero regions (padding of region features, as ban-vqa masks them) get
    zero weight. U, W are ``projection``s (dropout on their inputs); the joint size is
    ``joint_dim`` (ban-vqa: k·num_hid with k = 3).

    dim_v, dim_q: input sizes. joint_dim: size of σ(U v), σ(W q) and p_g. glimpses: G.
    activation: σ. dropout: on the projection inputs and on the image side σ(U v).
    weight_norm: weight-normalise U, W and the matrix of all p_g (one scale each).
    """

    def __init__(self, *, dim_v: int, dim_q: int, joint_dim: int, glimpses: int, activation: str = "relu",
                 dropout: float = 0.0, weight_norm: bool = False):
        super().__init__()
        self.v_proj = projection(dim_v, joint_dim, activation, dropout, weight_norm)
        self.q_proj = projection(dim_q, joint_dim, activation, dropout, weight_norm)
        self.dropout = nn.Dropout(dropout)
        self.glimpse_vectors = nn.Parameter(torch.randn(glimpses, joint_dim))  # p_g, N(0, 1) as ban-vqa's h_mat
        self.glimpse_bias = nn.Parameter(torch.randn(glimpses))  # b_g, N(0, 1) as ban-vqa's h_bias
        if weight_norm:
            nn.utils.parametrizations.weight_norm(self, "glimpse_vectors", dim=None)

    def forward(self, v: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_ = self.dropout(self.v_proj(v))  # (B, N, joint)
        logits = torch.einsum("gk,bnk,btk->bgnt", self.glimpse_vectors, v_, self.q_proj(q))
        logits = logits + self.glimpse_bias[None, :, None, None]  # (B, G, N, T)
        regions = real_regions(v)  # (B, N)
        regions = regions | ~regions.any(dim=1, keepdim=True)  # an all-zero image keeps every region
        pairs = regions[:, None, :, None] & mask[:, None, None, :]  # (B, 1, N, T)
        logits = logits.masked_fill(~pairs, float("-inf"))
        b, g, n, t = logits.shape
        return torch.softmax(logits.reshape(b, g, n * t), dim=-1).view(b, g, n, t), logits


class BilinearPooling(nn.Module):
    """BAN bilinear attention pooling for one glimpse (ban-vqa ``BCNet.forward_with_weights``, k = 1):

        f = Σ_{n,t} A[n, t] · (σ(U' v_n) ⊙ σ(W' q_t))

    v (B, N, dim_v), q (B, T, dim_q), attention map A (B, N, T) → (B, hidden_dim).
    dim_v, dim_q: input sizes. hidden_dim: output size. activation: σ. dropout: on the
    projection inputs. weight_norm: weight-normalise U', W'.
    """

    def __init__(self, *, dim_v: int, dim_q: int, hidden_dim: int, activation: str = "relu", dropout: float = 0.0,
                 weight_norm: bool = False):
        super().__init__()
        self.v_proj = projection(dim_v, hidden_dim, activation, dropout, weight_norm)
        self.q_proj = projection(dim_q, hidden_dim, activation, dropout, weight_norm)

    def forward(self, v: torch.Tensor, q: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnk,bnt,btk->bk", self.v_proj(v), att, self.q_proj(q))


# --- Counting module (Zhang et al. 2018), as ban-vqa uses it ------------------------------------------

class PiecewiseLinear(nn.Module):
    """Monotone piecewise-linear map of [0, 1] onto [0, 1] with ``pieces`` equal-width segments
    (Zhang et al. 2018, ``PiecewiseLin``: the functions of the counting module). The segment slopes are the
    normalised absolute weights, so f(1) = 1 and f is non-decreasing; the first weight is 0
    and stays 0 (|w| has zero gradient there), so f(0) = 0; the initial weights make f the identity. pieces: number of segments (16 in the paper).
    """

    def __init__(self, *, pieces: int = 16):
        super().__init__()
        self.pieces = pieces
        weight = torch.ones(pieces + 1)
        weight[0] = 0.0  # the cumulative sum starts at f(0) = 0
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.abs()
        w = w / w.sum()  # (pieces + 1,): segment heights summing to f(1) = 1
        csum = w.cumsum(dim=0)  # f at the segment starts
        y = self.pieces * x
        index = y.detach().floor().long().clamp(0, self.pieces)  # the segment x falls into
        return csum[index] + (y - y.floor()) * w[(index + 1).clamp(max=self.pieces)]


class CountingModule(nn.Module):
    """Counting component of Zhang et al. 2018 ("Learning to Count Objects in Natural Images for
    VQA"), as ban-vqa's ``Counter``: from region boxes and attention logits, a soft one-hot count
    over 0 … ``objects``, scaled by a confidence.

    The ``objects`` most attended regions are kept (all if fewer); a = sigmoid(logit);
    A = a aᵀ, D = 1 − IoU; intra-object dedup f1(A) ⊙ f2(D), inter-object dedup through the
    similarity of rows (f3 of outer differences); count c = sqrt(Σ score + Σ f1(a²) / row sims);
    output = interpolated one-hot of c × f8(mean |f6(a) − ½| + mean |f7(D) − ½|).

    boxes (B, K, 4) as (x1, y1, x2, y2), attention logits (B, K) → (B, objects + 1).
    objects: largest count (ban-vqa: 10). pieces: segments of each piecewise-linear f.
    As in Zhang et al.'s and ban-vqa's ``counting.py`` (``[PiecewiseLin(16) for _ in range(16)]``)
    there are ``FUNCTIONS`` = 16 functions, of which the forward pass reads the first ``USED`` = 8:
    the others are kept so the parameters (and a state dict) match the reference, and frozen, as
    they never get a gradient (DDP refuses trainable parameters that get none).
    """

    FUNCTIONS, USED = 16, 8

    def __init__(self, *, objects: int = 10, pieces: int = 16):
        super().__init__()
        self.objects = objects
        self.f = nn.ModuleList(PiecewiseLinear(pieces=pieces) for _ in range(self.FUNCTIONS))
        for unused in self.f[self.USED:]:
            unused.requires_grad_(False)

    def forward(self, boxes: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        keep = min(self.objects, attention.shape[1])
        attention, index = attention.topk(keep, dim=1)  # (B, k): only the most relevant proposals
        boxes = boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))  # (B, k, 4)
        a = torch.sigmoid(attention)
        relevancy = a.unsqueeze(2) * a.unsqueeze(1)  # (B, k, k): a_i a_j
        distance = 1 - box_iou(boxes)  # (B, k, k)

        score = self.f[0](relevancy) * self.f[1](distance)  # intra-object dedup
        dedup_score = self.f[3](relevancy) * self.f[4](distance)  # inter-object dedup
        # Rows j, l describe the same object when their dedup scores and attentions agree.
        score_diff = (dedup_score.unsqueeze(3) - dedup_score.unsqueeze(2)).abs()  # (B, i, j, l)
        att_diff = (a.unsqueeze(2) - a.unsqueeze(1)).abs()  # (B, j, l)
        similarity = self.f[2](1 - score_diff).prod(dim=1) * self.f[2](1 - att_diff)  # (B, j, l)
        row_sims = similarity.sum(dim=2)  # (B, k)
        score = score / (row_sims.unsqueeze(2) * row_sims.unsqueeze(1))
        correction = self.f[0](a * a) / row_sims  # the diagonal, deduplicated
        count = (score.sum(dim=(1, 2)) + correction.sum(dim=1)).add(1e-20).sqrt()  # (B,)

        att_conf = (self.f[5](a) - 0.5).abs().mean(dim=1)
        dist_conf = (self.f[6](distance) - 0.5).abs().mean(dim=(1, 2))
        confidence = self.f[7](att_conf + dist_conf)  # (B,)
        return self.one_hot(count) * confidence.unsqueeze(1)

    def one_hot(self, count: torch.Tensor) -> torch.Tensor:
        """(B,) counts in [0, objects] → (B, objects + 1), linear between the two nearest
        integers: with objects 3, 2.75 → [0, 0, 0.25, 0.75]."""
        count = count.clamp(0, self.objects)
        low = count.detach().floor().long()
        frac = (count - low).unsqueeze(1)
        bins = torch.arange(self.objects + 1, device=count.device)
        at_low = (bins == low.unsqueeze(1)).to(count.dtype)
        at_high = (bins == (low + 1).clamp(max=self.objects).unsqueeze(1)).to(count.dtype)
        return (1 - frac) * at_low + frac * at_high


def box_iou(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection over union of (B, K, 4) boxes (x1, y1, x2, y2) → (B, K, K)."""
    top_left = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)  # (B, K, K)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(dim=-1)  # (B, K)
    return inter / (area[:, :, None] + area[:, None, :] - inter + 1e-12)
