"""VQA models: image + question in, answer logits out.

Every model splits ``forward_features`` (encode image, encode question, fuse) from ``head``, so
feature caching and benchmarks reuse the parts. Questions that share an image within a batch
(``image_id``) pay for the image encoder once.

The family, from the lab's weekly reports (lab note 003) and tuning logs (lab notes 000, 001):

| name | model |
| --- | --- |
| ``vqa_mean_mlp`` | model 1: image vector ⊕ mean word embedding → MLP |
| ``vqa_lstm_mlp`` | model 2: image vector ⊕ LSTM last state → MLP |
| ``vqa_spatial_att`` | model 3: sigmoid spatial attention over the image map ⊕ LSTM last state → MLP |
| ``vqa_spatial_att_qpool`` | model 3 variant: … ⊕ softmax attention pooling over the LSTM states |
| ``vqa_san`` | model 4: stacked attention network (Yang et al. 2016), 1 or 2 hops |
| ``vqa_att_mutan`` | attention MUTAN (Ben-younes et al. 2017): Tucker fusion for glimpses and answer |
| ``vqa_ban`` | bilinear attention network (Kim et al. 2018) with ``glimpses`` |

All are built from the blocks in ``encoders.py`` (image and question encoders) and ``layers.py``
(attention and fusion). When the data yields precomputed image features (the ``frozen_features``
cache or VQA v2 feature files) it sets ``image_dim`` and no image encoder is built.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vqalab.models import register_model
from vqalab.models.encoders import (
    PRECOMPUTED,
    RESNET_OUT_DIM,
    PrecomputedFeatures,
    build_image_encoder,
    build_question_encoder,
)
from vqalab.models.layers import (
    ACTIVATIONS,
    AttentionPool,
    BilinearAttentionMap,
    BilinearPooling,
    SpatialGate,
    StackedAttentionHop,
    TuckerFusion,
    mlp,
)
from vqalab.registry import ConfigError

ImageEncoderName = Literal["small_cnn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "precomputed"]
QuestionEncoderName = Literal["mean", "lstm", "gru"]
ActivationName = Literal["relu", "tanh", "swish"]

# Defaults of the models after model 1: an easy-VQA epoch in well under a minute on a 2-core CPU.
SMALL_CNN_CHANNELS = (16, 32, 64)


def image_regions(image_map: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) feature map → (B, h·w, D) regions to attend over."""
    return image_map.flatten(2).transpose(1, 2)


def resolve_image_encoder(image_encoder: str, image_weights: str | None, image_dim: int | None) -> str:
    """The encoder to build: ``precomputed`` exactly when the data provides features (``image_dim``)."""
    if image_dim is None:
        if image_encoder == PRECOMPUTED:
            raise ConfigError("model.image_encoder = 'precomputed' needs image features from the data "
                              "(data frozen_features, or vqa_v2 with feature files)")
        return image_encoder
    if image_encoder in RESNET_OUT_DIM or image_weights:
        raise ConfigError(
            f"model.image_encoder = {image_encoder!r}, image_weights = {image_weights!r}: the data already yields "
            f"image features of size {image_dim} (frozen_features or feature files), so this encoder would never "
            f"run; remove them from the model section (the data section chooses the encoder)")
    return PRECOMPUTED


class VQAModel(nn.Module):
    """Base class: owns the image and question encoders and the image de-duplication.

    Subclasses build their fusion and ``head`` and define ``forward_features``. The keyword
    arguments are those documented in ``ENCODER_ARGS_DOC``.
    """

    def __init__(self, *, image_encoder: str, image_weights: str | None, freeze_image: bool,
                 cnn_channels: tuple[int, ...], vocab_size: int, question_encoder: str, embed_dim: int,
                 question_dim: int, pool_image: bool = False, image_dim: int | None = None,
                 embedding_weights: str | None = None, freeze_embedding: bool = False):
        super().__init__()
        kind = resolve_image_encoder(image_encoder, image_weights, image_dim)
        self.image_encoder = build_image_encoder(
            kind, weights_path=image_weights, frozen=freeze_image, cnn_channels=cnn_channels, pooled=pool_image,
            feature_dim=image_dim,
        )
        self.question_encoder = build_question_encoder(
            question_encoder, vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=question_dim,
            weights_path=embedding_weights, frozen=freeze_embedding,
        )

    def train(self, mode: bool = True) -> VQAModel:
        super().train(mode)
        if self.image_encoder.frozen:
            self.image_encoder.eval()  # frozen BatchNorm statistics stay as loaded
        return self

    def encode_image(self, image: torch.Tensor, image_id: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) → (B, D, h, w); with ``image_id`` each distinct image is encoded once."""
        if image_id is None or isinstance(self.image_encoder, PrecomputedFeatures):
            return self.image_encoder(image)
        unique_ids, inverse = torch.unique(image_id, return_inverse=True)
        if len(unique_ids) == len(image_id):
            return self.image_encoder(image)
        first = torch.zeros(len(unique_ids), dtype=torch.long, device=image_id.device)
        first.scatter_(0, inverse, torch.arange(len(image_id), device=image_id.device))
        return self.image_encoder(image[first])[inverse]  # (U, D, h, w) gathered back to (B, D, h, w)

    def forward_features(self, image, question, question_len, image_id=None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, image: torch.Tensor, question: torch.Tensor, question_len: torch.Tensor,
                image_id: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.forward_features(image, question, question_len, image_id))


class ConcatMLP(VQAModel):
    """Models 1 and 2: pooled image vector ⊕ question vector → MLP.

    num_answers: classes. hidden_dim: MLP hidden size. dropout: before the last layer.
    """

    def __init__(self, *, num_answers: int, hidden_dim: int, dropout: float, **encoders):
        super().__init__(**encoders)
        in_dim = self.image_encoder.out_dim + self.question_encoder.out_dim
        self.head = mlp(in_dim, hidden_dim, num_answers, dropout)

    def forward_features(self, image, question, question_len, image_id=None):
        v = self.encode_image(image, image_id).mean(dim=(2, 3))  # (B, D)
        q = self.question_encoder(question, question_len).vector  # (B, Q)
        return torch.cat([v, q], dim=1)


class SpatialAttentionMLP(VQAModel):
    """Model 3: sigmoid spatial attention over the image map ⊕ question vector → MLP.

    num_answers, hidden_dim, dropout: as ``ConcatMLP``. question_pool: ``last`` uses the
    encoder's question vector (LSTM last state); ``attention`` pools the token states with a
    softmax attention (the lab's variant).
    """

    def __init__(self, *, num_answers: int, hidden_dim: int, dropout: float, question_pool: str, **encoders):
        super().__init__(**encoders)
        self.spatial_attention = SpatialGate(dim=self.image_encoder.out_dim)
        self.question_pool = AttentionPool(dim=self.question_encoder.out_dim) if question_pool == "attention" else None
        self.head = mlp(self.image_encoder.out_dim + self.question_encoder.out_dim, hidden_dim, num_answers, dropout)

    def forward_features(self, image, question, question_len, image_id=None):
        v = self.spatial_attention(self.encode_image(image, image_id))  # (B, D)
        words = self.question_encoder(question, question_len)
        q = words.vector if self.question_pool is None else self.question_pool(words.states, words.mask)  # (B, Q)
        return torch.cat([v, q], dim=1)


class StackedAttentionNet(VQAModel):
    """Model 4, SAN: image regions projected to the question space, then ``hops`` attention layers
    refine the query u (u_0 = question vector); the answer is classified from the last u.

    num_answers: classes. hops: attention layers (SAN uses 2). att_dim: size k of h_A.
    hidden_dim: classifier hidden size. dropout: on h_A and before the last layer.
    """

    def __init__(self, *, num_answers: int, hops: int, att_dim: int, hidden_dim: int, dropout: float, **encoders):
        super().__init__(**encoders)
        d = self.question_encoder.out_dim
        # v_I = tanh(W f_I + b): SAN's image regions live in the question space, so u = ṽ_I + v_Q is defined.
        self.image_proj = nn.Sequential(nn.Linear(self.image_encoder.out_dim, d), nn.Tanh())
        self.hops = nn.ModuleList(StackedAttentionHop(dim=d, att_dim=att_dim, dropout=dropout) for _ in range(hops))
        self.head = mlp(d, hidden_dim, num_answers, dropout)

    def forward_features(self, image, question, question_len, image_id=None):
        regions = self.image_proj(image_regions(self.encode_image(image, image_id)))  # (B, N, d)
        u = self.question_encoder(question, question_len).vector  # (B, d)
        for hop in self.hops:
            u, _ = hop(regions, u)
        return u


class AttentionMUTAN(VQAModel):
    """Attention MUTAN: a Tucker fusion of each region with the question scores ``glimpses``
    attention maps over the regions; the attended image vectors, concatenated, are fused with the
    question by a second Tucker fusion; a linear layer gives the answer.

    num_answers: classes. glimpses: attention maps. dim_hv, dim_hq, dim_mm: Tucker sizes (both
    fusions). rank: R of the answer fusion. att_rank: R of the attention fusion. dropout_in,
    dropout_hidden: as ``TuckerFusion`` (dropout_in also before the classifier). activation: σ.
    """

    def __init__(self, *, num_answers: int, glimpses: int, dim_hv: int, dim_hq: int, dim_mm: int, rank: int,
                 att_rank: int, dropout_in: float, dropout_hidden: float, activation: str, **encoders):
        super().__init__(**encoders)
        dim_v, dim_q = self.image_encoder.out_dim, self.question_encoder.out_dim
        sizes = {"dim_hv": dim_hv, "dim_hq": dim_hq, "dim_mm": dim_mm, "dropout_in": dropout_in,
                 "dropout_hidden": dropout_hidden, "activation": activation}
        self.attention_fusion = TuckerFusion(dim_v=dim_v, dim_q=dim_q, rank=att_rank, **sizes)
        self.glimpse_scores = nn.Linear(dim_mm, glimpses)
        self.fusion = TuckerFusion(dim_v=glimpses * dim_v, dim_q=dim_q, rank=rank, **sizes)
        self.head = nn.Sequential(nn.Dropout(dropout_in), nn.Linear(dim_mm, num_answers))

    def forward_features(self, image, question, question_len, image_id=None):
        regions = image_regions(self.encode_image(image, image_id))  # (B, N, D)
        q = self.question_encoder(question, question_len).vector  # (B, Q)
        joint = self.attention_fusion(regions, q.unsqueeze(1))  # (B, N, dim_mm)
        p = torch.softmax(self.glimpse_scores(joint), dim=1)  # (B, N, G): one distribution per glimpse
        attended = torch.einsum("bng,bnd->bgd", p, regions).flatten(1)  # (B, G·D)
        return self.fusion(attended, q)  # (B, dim_mm)


class BilinearAttentionNet(VQAModel):
    """BAN: bilinear attention maps between regions and question tokens (one per glimpse); each
    glimpse's bilinear pooling updates the token states residually; the answer is classified
    from the sum of the final token states.

    num_answers: classes. glimpses: attention maps. hidden_dim: joint (bilinear) size and
    classifier hidden size. activation: σ of the projections and classifier. dropout: on the
    projections and in the classifier.
    """

    def __init__(self, *, num_answers: int, glimpses: int, hidden_dim: int, activation: str, dropout: float,
                 **encoders):
        super().__init__(**encoders)
        dim_v, dim_q = self.image_encoder.out_dim, self.question_encoder.out_dim
        self.attention = BilinearAttentionMap(dim_v=dim_v, dim_q=dim_q, hidden_dim=hidden_dim, glimpses=glimpses,
                                              activation=activation, dropout=dropout)
        self.pooling = nn.ModuleList(
            BilinearPooling(dim_v=dim_v, dim_q=dim_q, hidden_dim=hidden_dim, activation=activation, dropout=dropout)
            for _ in range(glimpses))
        self.question_update = nn.ModuleList(nn.Linear(hidden_dim, dim_q) for _ in range(glimpses))
        self.head = mlp(dim_q, hidden_dim, num_answers, dropout, act=ACTIVATIONS[activation])

    def forward_features(self, image, question, question_len, image_id=None):
        regions = image_regions(self.encode_image(image, image_id))  # (B, N, D)
        words = self.question_encoder(question, question_len)
        q = words.states  # (B, T, Q)
        att = self.attention(regions, q, words.mask)  # (B, G, N, T)
        for g, (pool, update) in enumerate(zip(self.pooling, self.question_update)):
            q = q + update(pool(regions, q, att[:, g])).unsqueeze(1)  # residual on every token: (B, T, Q)
        return (q * words.mask.unsqueeze(-1)).sum(dim=1)  # (B, Q), padding excluded


# --- Registered builders -------------------------------------------------------------------------

ENCODER_ARGS = ("vocab_size", "image_encoder", "image_weights", "freeze_image", "cnn_channels", "pool_image",
                "image_dim", "question_encoder", "embed_dim", "question_dim", "embedding_weights",
                "freeze_embedding")

ENCODER_ARGS_DOC = """
    Encoder arguments (shared by every VQA model):
    vocab_size, num_answers: set from the data (question tokens, answer classes).
    image_encoder: small_cnn (for 64×64 inputs) or resnet18/34/50/101/152 (torchvision).
    image_weights: local state-dict file for the ResNet (None: random init).
    freeze_image: keep the image encoder's weights fixed.
    cnn_channels: small_cnn channels per stage.
    pool_image: average-pool the image map to one region (attention then has one region).
    image_dim: set from the data when it yields precomputed image features (the frozen_features
        cache, VQA v2 feature files): no image encoder is built; leave image_encoder at its default.
    question_encoder: mean (of word embeddings), lstm or gru (the question vector is the last state).
    embed_dim: word embedding size.
    question_dim: lstm/gru state size (mean: the vector size is embed_dim).
    embedding_weights: local (vocab_size, embed_dim) matrix file for the word embeddings, rows in
        the data's vocabulary order (``encoders.embedding_matrix_from_text`` builds one); None: random.
    freeze_embedding: keep the loaded word embeddings fixed.
"""


def vqa_builder(fn):
    """Register a VQA builder, its docstring completed with the shared encoder arguments."""
    fn.__doc__ = (fn.__doc__ or "") + ENCODER_ARGS_DOC
    return register_model(fn)


def encoder_kwargs(args: dict) -> dict:
    """The encoder arguments out of a builder's ``locals()``."""
    return {k: args[k] for k in ENCODER_ARGS if k in args}


@vqa_builder
def vqa_mean_mlp(
    *,
    vocab_size: int,
    num_answers: int,
    image_encoder: ImageEncoderName = "small_cnn",
    image_weights: str | None = None,
    freeze_image: bool = False,
    cnn_channels: tuple[int, ...] = (32, 64, 128),
    pool_image: bool = False,
    image_dim: int | None = None,
    embed_dim: int = 128,
    embedding_weights: str | None = None,
    freeze_embedding: bool = False,
    hidden_dim: int = 256,
    dropout: float = 0.0,
) -> VQAModel:
    """Model 1: image vector ⊕ mean of word embeddings → MLP classifier.

    hidden_dim: MLP hidden size. dropout: before the last layer.
    """
    return ConcatMLP(num_answers=num_answers, hidden_dim=hidden_dim, dropout=dropout, question_encoder="mean",
                     question_dim=embed_dim, **encoder_kwargs(locals()))


@vqa_builder
def vqa_lstm_mlp(
    *,
    vocab_size: int,
    num_answers: int,
    image_encoder: ImageEncoderName = "small_cnn",
    image_weights: str | None = None,
    freeze_image: bool = False,
    cnn_channels: tuple[int, ...] = SMALL_CNN_CHANNELS,
    pool_image: bool = False,
    image_dim: int | None = None,
    question_encoder: QuestionEncoderName = "lstm",
    embed_dim: int = 64,
    question_dim: int = 128,
    embedding_weights: str | None = None,
    freeze_embedding: bool = False,
    hidden_dim: int = 128,
    dropout: float = 0.0,
) -> VQAModel:
    """Model 2: image vector ⊕ LSTM last state → MLP classifier.

    hidden_dim: MLP hidden size. dropout: before the last layer.
    """
    return ConcatMLP(num_answers=num_answers, hidden_dim=hidden_dim, dropout=dropout, **encoder_kwargs(locals()))


@vqa_builder
def vqa_spatial_att(
    *,
    vocab_size: int,
    num_answers: int,
    image_encoder: ImageEncoderName = "small_cnn",
    image_weights: str | None = None,
    freeze_image: bool = False,
    cnn_channels: tuple[int, ...] = SMALL_CNN_CHANNELS,
    pool_image: bool = False,
    image_dim: int | None = None,
    question_encoder: QuestionEncoderName = "lstm",
    embed_dim: int = 64,
    question_dim: int = 128,
    embedding_weights: str | None = None,
    freeze_embedding: bool = False,
    hidden_dim: int = 128,
    dropout: float = 0.0,
) -> VQAModel:
    """Model 3: sigmoid spatial attention (1×1 convolution over the image map) ⊕ LSTM last state → MLP.

    hidden_dim: MLP hidden size. dropout: before the last layer.
    """
    return SpatialAttentionMLP(num_answers=num_answers, hidden_dim=hidden_dim, dropout=dropout,
                               question_pool="last", **encoder_kwargs(locals()))


@vqa_builder
def vqa_spatial_att_qpool(
    *,
    vocab_size: int,
    num_answers: int,
    image_encoder: ImageEncoderName = "small_cnn",
    image_weights: str | None = None,
    freeze_image: bool = False,
    cnn_channels: tuple[int, ...] = SMALL_CNN_CHANNELS,
    pool_image: bool = False,
    image_dim: int | None = None,
    question_encoder: QuestionEncoderName = "lstm",
    embed_dim: int = 64,
    question_dim: int = 128,
    embedding_weights: str | None = None,
    freeze_embedding: bool = False,
    hidden_dim: int = 128,
    dropout: float = 0.0,
) -> VQAModel:
    """Model 3 variant: sigmoid spatial attention over the image map ⊕ softmax attention pooling
    over the LSTM states → MLP.

    hidden_dim: MLP hidden size. dropout: before the last layer.
    """
    return SpatialAttentionMLP(num_answers=num_answers, hidden_dim=hidden_dim, dropout=dropout,
                               question_pool="attention", **encoder_kwargs(locals()))


@vqa_builder
def vqa_san(
    *,
    vocab_size: int,
    num_answers: int,
    image_encoder: ImageEncoderName = "small_cnn",
    image_weights: str | None = None,
    freeze_image: bool = False,
    cnn_channels: tuple[int, ...] = SMALL_CNN_CHANNELS,
    pool_image: bool = False,
    image_dim: int | None = None,
    question_encoder: QuestionEncoderName = "lstm",
    embed_dim: int = 64,
    question_dim: int = 128,
    embedding_weights: str | None = None,
    freeze_embedding: bool = False,
    hops: int = 2,
    att_dim: int = 64,
    hidden_dim: int = 128,
    dropout: float = 0.0,
) -> VQAModel:
    """Model 4: stacked attention network (SAN, Yang et al. 2016).

    h_A = tanh(W_I v_I ⊕ (W_Q u + b_A)), p_I = softmax(W_P h_A + b_P), u ← Σ p_I v_I + u, from
    u = v_Q, repeated ``hops`` times. The lab's model 4 is hops=1 with question_encoder=mean.
    hops: attention layers (1 or 2; SAN uses 2). att_dim: size k of h_A (the lab used 128).
    hidden_dim: classifier hidden size. dropout: on h_A and before the last layer.
    """
    if hops < 1:
        raise ConfigError(f"model.hops = {hops}: expected at least 1 attention layer")
    return StackedAttentionNet(num_answers=num_answers, hops=hops, att_dim=att_dim, hidden_dim=hidden_dim,
                               dropout=dropout, **encoder_kwargs(locals()))


@vqa_builder
def vqa_att_mutan(
    *,
    vocab_size: int,
    num_answers: int,
    image_encoder: ImageEncoderName = "small_cnn",
    image_weights: str | None = None,
    freeze_image: bool = False,
    cnn_channels: tuple[int, ...] = SMALL_CNN_CHANNELS,
    pool_image: bool = False,
    image_dim: int | None = None,
    question_encoder: QuestionEncoderName = "lstm",
    embed_dim: int = 64,
    question_dim: int = 128,
    embedding_weights: str | None = None,
    freeze_embedding: bool = False,
    glimpses: int = 2,
    dim_hv: int = 64,
    dim_hq: int = 64,
    dim_mm: int = 64,
    rank: int = 3,
    att_rank: int = 2,
    dropout_in: float = 0.0,
    dropout_hidden: float = 0.0,
    activation: ActivationName = "tanh",
) -> VQAModel:
    """Attention MUTAN (Ben-younes et al. 2017): Tucker fusion z = Σ_r (W_hq^r σ(W_q q)) ⊙ (W_hv^r σ(W_v v))
    scores ``glimpses`` attention maps over the image regions and fuses the attended image with the
    question. Small defaults for the CPU; ``params/train/vqa_att_mutan.yaml`` holds the lab's values
    (dim_v 2048 = ResNet-152, dim_q 2400, dim_hv 620, dim_hq 310, dim_mm 510, R 10, att_R 5).

    glimpses: attention maps. dim_hv, dim_hq: sizes of the projected image and question.
    dim_mm: fused size. rank: R of the answer fusion. att_rank: R of the attention fusion (att_R).
    dropout_in: dropout on the fusion inputs and before the classifier (the lab: 0.5).
    dropout_hidden: dropout on the projected inputs (the lab: 0). activation: σ (tanh in MUTAN).
    """
    return AttentionMUTAN(num_answers=num_answers, glimpses=glimpses, dim_hv=dim_hv, dim_hq=dim_hq, dim_mm=dim_mm,
                          rank=rank, att_rank=att_rank, dropout_in=dropout_in, dropout_hidden=dropout_hidden,
                          activation=activation, **encoder_kwargs(locals()))


@vqa_builder
def vqa_ban(
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
    glimpses: int = 2,
    hidden_dim: int = 64,
    activation: ActivationName = "relu",
    dropout: float = 0.0,
) -> VQAModel:
    """Bilinear attention network (BAN, Kim et al. 2018) with ``glimpses`` bilinear attention maps
    between image regions and question tokens and residual updates of the token states.
    Lab note 001's values: glimpses (gamma) 2, num_hid 1024, activation swish, dropout 0.45.

    glimpses: attention maps (1-4). hidden_dim: joint size and classifier hidden size (num_hid).
    activation: σ of the projections and classifier (relu or swish). dropout: on the projections
    and in the classifier.
    """
    return BilinearAttentionNet(num_answers=num_answers, glimpses=glimpses, hidden_dim=hidden_dim,
                                activation=activation, dropout=dropout, **encoder_kwargs(locals()))
