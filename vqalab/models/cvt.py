"""Map-view segmentation from several cameras: the cross-view transformer and its latent-array variant.

``cvt`` follows Zhou & Krähenbühl 2022, "Cross-view Transformers for real-time Map-view Semantic
Segmentation", at CPU size:

- a small convolutional backbone turns each camera image into a (dim, h, w) feature map (stride 4);
- camera-aware positional embeddings: every feature cell's viewing ray d = R⁻¹ K⁻¹ (u, v, 1) (world
  frame, unit length) is embedded by ``img_embed``, each camera centre t by ``cam_embed``, each
  map-view cell's world position by ``bev_embed``; keys are ‖img_embed(d) − cam_embed(t)‖ plus a
  projection of the image features, queries are ‖bev_embed(w) − cam_embed(t)‖ plus the map-view
  state, values are projected image features (‖·‖: unit length);
- one cross-attention layer: every map-view cell attends over the cells of *all* cameras at once,
  with a query per camera (the query depends on the camera through its centre), then an MLP;
- a decoder upsamples the ``bev_size``² map-view grid to the ``map_size``² output logits.

``cvt_io`` (lab note 004) adds a latent array between the cross-attention and the decoder: the
map-view grid is copied into N latent maps (plus a learned embedding per latent) — the lab note's
``[b, n, d, H, W]`` — and L pre-norm transformer blocks update them:

- ``latent_attention="per_latent"`` (the lab note's v1): self-attention over all N·H·W cells of the
  N maps, attention cost ∝ (N·H·W)²;
- ``latent_attention="pooled"`` (v2): queries and keys come from the maps averaged over the N latents
  (``[b, d, H, W]``), so one H·W × H·W attention map is computed and applied to the values of every
  latent, attention cost ∝ (H·W)² + N·(H·W)². Same parameters as per-latent.
- ``share_weights``: one block applied L times (the lab note's default) or L blocks.

The N maps are averaged and layer-normed before the decoder. The named variants of lab note 004 (v1_1, v2_1 … v2_9,
each with its learning rate) are params files ``params/train/cvt_io_v*.yaml`` (and ``cvt.yaml``).

Attention is written with explicit matrix products (einsum) where queries are per camera or
shared across latents, so ``torch.utils.flop_counter`` counts it on every device; the per-latent
blocks use ``layers.TransformerBlock`` (scaled_dot_product_attention, counted through the formulas
``vqalab.bench`` registers for its CPU kernel).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqalab.models import register_model
from vqalab.models.layers import (
    LAYER_NORM_EPS,
    VIT_INIT_STD,
    FeedForward,
    SelfAttention,
    TransformerBlock,
    init_vit_weights,
)

LATENT_MLP_RATIO = 4.0  # the latent blocks are standard ViT blocks


class ImageBackbone(nn.Sequential):
    """Two 3×3 stride-2 convolutions with BatchNorm and ReLU: (B, 3, H, W) → (B, dim, H/4, W/4).

    channels: width of the first convolution. dim: output channels (the token size).
    """

    def __init__(self, *, channels: int, dim: int):
        super().__init__(
            nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(),
        )


class CameraAwareAttention(SelfAttention):
    """Cross-attention from per-camera map-view queries to the image cells of all cameras.

    query (B, ncam, Q, dim), key and value (B, ncam, T, dim) → (B, Q, dim): for each query cell one
    softmax over all ncam·T image cells, the logit of cell (k, i) using camera k's query. The
    ``qkv`` weight rows project queries, keys and values (same parameters as ``SelfAttention``);
    each input is layer-normed first, as in the paper's code.
    """

    def __init__(self, *, dim: int, num_heads: int):
        super().__init__(dim=dim, num_heads=num_heads)
        self.norm_q = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm_k = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm_v = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        w_q, w_k, w_v = self.qkv.weight.chunk(3)
        b_q, b_k, b_v = self.qkv.bias.chunk(3)
        b, ncam, nq, d = query.shape
        h = self.num_heads
        q = F.linear(self.norm_q(query), w_q, b_q).view(b, ncam, nq, h, d // h)
        k = F.linear(self.norm_k(key), w_k, b_k).view(b, ncam, -1, h, d // h)
        v = F.linear(self.norm_v(value), w_v, b_v).view(b, ncam, -1, h, d // h)
        logits = torch.einsum("bnqhe,bnthe->bhqnt", q, k) * (d // h) ** -0.5  # (B, heads, Q, ncam, T)
        weights = logits.flatten(-2).softmax(dim=-1).view_as(logits)  # over all cameras' cells
        out = torch.einsum("bhqnt,bnthe->bqhe", weights, v)  # (B, Q, heads, d_head)
        return self.proj(out.reshape(b, nq, d))


def pooled_latent_block(block: TransformerBlock, z: torch.Tensor) -> torch.Tensor:
    """A ``TransformerBlock`` over N latent maps with one attention map for all of them.

    z (B, N, T, dim) → (B, N, T, dim). Queries and keys are averaged over the N latents (the
    projection is linear, so this is the projection of the pooled maps ``[b, d, H, W]``); the
    (T × T) attention weights then mix each latent's own values. The MLP runs on every latent cell.
    """
    attn = block.attn
    b, n, t, d = z.shape
    h = attn.num_heads
    q, k, v = attn.qkv(block.norm1(z)).chunk(3, dim=-1)  # each (B, N, T, dim)
    q = q.mean(dim=1).view(b, t, h, d // h)  # (B, T, heads, d_head)
    k = k.mean(dim=1).view(b, t, h, d // h)
    v = v.view(b, n, t, h, d // h)
    weights = (torch.einsum("bqhe,bkhe->bhqk", q, k) * (d // h) ** -0.5).softmax(dim=-1)  # (B, heads, T, T)
    out = torch.einsum("bhqk,bnkhe->bnqhe", weights, v).reshape(b, n, t, d)
    z = z + block.drop_path(attn.proj(out))
    return z + block.drop_path(block.mlp(block.norm2(z)))


class LatentArray(nn.Module):
    """Lab note 004's latent array: N latent copies of the map-view grid updated by L blocks.

    dim: token size. num_heads: attention heads. num_latents: N. layers: L. attention: "per_latent"
    (self-attention over all N·T cells) or "pooled" (one attention map from the latent-averaged
    grid). share_weights: one block applied L times, else L blocks. (B, T, dim) → (B, T, dim): the
    N maps averaged, then layer-normed (as after a ViT's last block).
    """

    def __init__(self, *, dim: int, num_heads: int, num_latents: int, layers: int,
                 attention: Literal["per_latent", "pooled"], share_weights: bool):
        super().__init__()
        if attention not in ("per_latent", "pooled"):
            raise ValueError(f"latent_attention = {attention!r}: expected 'per_latent' or 'pooled'")
        if num_latents < 1 or layers < 1:
            raise ValueError(f"num_latents = {num_latents}, latent_layers = {layers}: both must be ≥ 1")
        self.layers, self.attention, self.share_weights = layers, attention, share_weights
        self.latent_embed = nn.Parameter(torch.zeros(num_latents, dim))  # one vector per latent map
        nn.init.trunc_normal_(self.latent_embed, std=VIT_INIT_STD)
        self.blocks = nn.ModuleList(TransformerBlock(dim=dim, num_heads=num_heads, mlp_ratio=LATENT_MLP_RATIO)
                                    for _ in range(1 if share_weights else layers))
        self.blocks.apply(init_vit_weights)  # small residual updates at first: training starts close to cvt
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)  # pre-norm blocks leave the residual stream unnormalised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        z = x[:, None] + self.latent_embed[None, :, None]  # (B, N, T, dim): [b, n, d, H, W] as tokens
        n = z.shape[1]
        for i in range(self.layers):
            block = self.blocks[0 if self.share_weights else i]
            if self.attention == "per_latent":
                z = block(z.reshape(b, n * t, d)).view(b, n, t, d)
            else:
                z = pooled_latent_block(block, z)
        return self.norm(z.mean(dim=1))


class CrossViewTransformer(nn.Module):
    """Camera images + intrinsics + extrinsics → map-view occupancy logits (B, 1, map_size, map_size).

    map_size: output grid side (from the data). map_extent: the grid covers [-map_extent,
    map_extent]² metres (from the data). dim: token size. num_heads: attention heads.
    bev_size: side of the map-view query grid (divides map_size). backbone_channels: width of the
    first backbone convolution. mlp_ratio: cross-attention MLP hidden size / dim.
    latent_array: the module run on the map-view tokens after the cross-attention (None: none).
    Camera conventions as in ``vqalab.data.views``.
    """

    def __init__(self, *, map_size: int, map_extent: float, dim: int, num_heads: int, bev_size: int,
                 backbone_channels: int, mlp_ratio: float, latent_array: nn.Module | None = None):
        super().__init__()
        if map_size % bev_size:
            raise ValueError(f"bev_size {bev_size} does not divide map_size {map_size}")
        self.bev_size = bev_size
        self.backbone = ImageBackbone(channels=backbone_channels, dim=dim)
        self.img_embed = nn.Linear(3, dim, bias=False)  # viewing ray → embedding
        self.cam_embed = nn.Linear(3, dim, bias=False)  # camera centre → embedding
        self.bev_embed = nn.Linear(2, dim)  # map-view cell position (x, y) → embedding
        self.feature_proj = nn.Linear(dim, dim)  # image features added to the keys
        self.feature_linear = nn.Linear(dim, dim)  # image features → values
        self.map_queries = nn.Parameter(torch.zeros(bev_size * bev_size, dim))  # learned map-view state
        nn.init.trunc_normal_(self.map_queries, std=VIT_INIT_STD)
        self.cross_attn = CameraAwareAttention(dim=dim, num_heads=num_heads)
        self.prenorm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(dim=dim, hidden_dim=int(dim * mlp_ratio))
        self.postnorm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.latent_array = latent_array
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=map_size // bev_size, mode="bilinear", align_corners=False),
            nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(),
            nn.Conv2d(dim, 1, 1),
        )
        # World (x, y) of each map-view query cell, in the mask's layout: rows forward → back,
        # columns left → right, scaled to [-1, 1] by map_extent.
        centres = 1 - (torch.arange(bev_size, dtype=torch.float32) + 0.5) * (2 / bev_size)
        x, y = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("bev_grid", torch.stack([x, y], dim=-1).view(-1, 2), persistent=False)  # (T, 2)
        self.map_extent = map_extent

    def camera_rays(self, intrinsics: torch.Tensor, extrinsics: torch.Tensor, h: int, w: int,
                    image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit viewing rays (B, ncam, h·w, 3) of the feature cells' centres and camera centres
        (B, ncam, 3), both in the world frame (metres / map_extent for the centres)."""
        sy, sx = image_hw[0] / h, image_hw[1] / w  # image pixels per feature cell
        v, u = torch.meshgrid((torch.arange(h, device=intrinsics.device) + 0.5) * sy,
                              (torch.arange(w, device=intrinsics.device) + 0.5) * sx, indexing="ij")
        pixels = torch.stack([u, v, torch.ones_like(u)]).view(3, -1).to(intrinsics.dtype)  # (3, h·w)
        cam_to_world = torch.linalg.inv(extrinsics)  # (B, ncam, 4, 4)
        rays = cam_to_world[..., :3, :3] @ torch.linalg.inv(intrinsics) @ pixels  # (B, ncam, 3, h·w)
        return F.normalize(rays.transpose(-1, -2), dim=-1), cam_to_world[..., :3, 3] / self.map_extent

    def forward_features(self, images: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
        """Map-view tokens (B, bev_size², dim) after the cross-attention (and the latent array)."""
        b, ncam = images.shape[:2]
        feats = self.backbone(images.flatten(0, 1))  # (B·ncam, dim, h, w)
        h, w = feats.shape[-2:]
        feats = feats.flatten(2).transpose(1, 2).reshape(b, ncam, h * w, -1)  # (B, ncam, h·w, dim)
        rays, centres = self.camera_rays(intrinsics.float(), extrinsics.float(), h, w, images.shape[-2:])
        cam = self.cam_embed(centres.to(feats.dtype))[:, :, None]  # (B, ncam, 1, dim)
        key = F.normalize(self.img_embed(rays.to(feats.dtype)) - cam, dim=-1) + self.feature_proj(feats)
        value = self.feature_linear(feats)
        query_pos = F.normalize(self.bev_embed(self.bev_grid.to(feats.dtype)) - cam, dim=-1)  # (B, ncam, T, dim)
        x = self.map_queries.expand(b, -1, -1)  # (B, T, dim)
        x = x + self.cross_attn(query_pos + x[:, None], key, value)
        x = self.postnorm(x + self.mlp(self.prenorm(x)))
        return x if self.latent_array is None else self.latent_array(x)

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(images, intrinsics, extrinsics)  # (B, T, dim)
        grid = x.transpose(1, 2).reshape(x.shape[0], -1, self.bev_size, self.bev_size)  # (B, dim, bev, bev)
        return self.decoder(grid)  # (B, 1, map_size, map_size) logits


@register_model
def cvt(*, map_size: int = 16, map_extent: float = 6.0, dim: int = 32, num_heads: int = 4, bev_size: int = 8,
        backbone_channels: int = 16, mlp_ratio: float = 2.0) -> CrossViewTransformer:
    """Cross-view transformer (Zhou & Krähenbühl 2022), lab note 004's baseline "cvt".

    map_size, map_extent: output grid side and the metres it covers (set from the data).
    dim: token size. num_heads: attention heads (divide dim). bev_size: map-view query grid side
    (divides map_size; the decoder upsamples). backbone_channels: first convolution's width.
    mlp_ratio: cross-attention MLP hidden size / dim.
    """
    return CrossViewTransformer(map_size=map_size, map_extent=map_extent, dim=dim, num_heads=num_heads,
                                bev_size=bev_size, backbone_channels=backbone_channels, mlp_ratio=mlp_ratio)


@register_model
def cvt_io(*, map_size: int = 16, map_extent: float = 6.0, dim: int = 32, num_heads: int = 4, bev_size: int = 8,
           backbone_channels: int = 16, mlp_ratio: float = 2.0, num_latents: int = 10, latent_layers: int = 6,
           latent_attention: Literal["per_latent", "pooled"] = "pooled",
           share_weights: bool = True) -> CrossViewTransformer:
    """Cross-view transformer with lab note 004's latent array after the cross-attention.

    Arguments of ``cvt``, and: num_latents: N latent maps. latent_layers: L transformer blocks
    applied to them. latent_attention: "per_latent" (v1: attention over all N·H·W cells) or
    "pooled" (v2: one attention map from the latent-averaged grid). share_weights: one block
    applied L times (lab note default) or L separate blocks (v2_3, v2_4).
    """
    latents = LatentArray(dim=dim, num_heads=num_heads, num_latents=num_latents, layers=latent_layers,
                          attention=latent_attention, share_weights=share_weights)
    return CrossViewTransformer(map_size=map_size, map_extent=map_extent, dim=dim, num_heads=num_heads,
                                bev_size=bev_size, backbone_channels=backbone_channels, mlp_ratio=mlp_ratio,
                                latent_array=latents)
