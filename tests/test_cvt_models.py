"""Cross-view transformer family: parameter counts from a formula, FLOPs of the latent attention
shapes, forward / backward on every registered map-view model, camera geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqalab.bench import count_flops
from vqalab.data.views import camera_matrices
from vqalab.models import MODELS, create_model

MAP_MODELS = [n for n in MODELS.names() if {"map_size", "map_extent"} <= set(MODELS.parameters(n))]
SMALL = {"map_size": 8, "map_extent": 8.0, "dim": 16, "num_heads": 2, "bev_size": 4, "backbone_channels": 8}


def inputs(batch: int = 2, ncam: int = 3, image_size: int = 16, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    yaws = np.linspace(0, 2 * math.pi, ncam, endpoint=False)
    k, e = camera_matrices(image_size=image_size, yaws=yaws)
    return {"images": torch.randn(batch, ncam, 3, image_size, image_size, generator=gen),
            "intrinsics": torch.tensor(k, dtype=torch.float32).expand(batch, -1, -1, -1),
            "extrinsics": torch.tensor(e, dtype=torch.float32).expand(batch, -1, -1, -1)}


def cvt_params(*, dim: int, backbone_channels: int, bev_size: int, mlp_ratio: float = 2.0) -> int:
    """Written from the model description, not from the code."""
    d, c, t, h = dim, backbone_channels, bev_size ** 2, int(dim * mlp_ratio)
    n = 27 * c + 2 * c + 9 * c * d + 2 * d  # two bias-free 3×3 convs with BatchNorm
    n += 3 * d + 3 * d + 2 * d + d  # ray and camera-centre embeddings (no bias), map position embedding
    n += 2 * (d * d + d)  # feature_proj (keys), feature_linear (values)
    n += t * d  # learned map-view queries
    n += 3 * d * d + 3 * d + d * d + d + 3 * 2 * d  # q, k, v, output projections; LayerNorm on q, k, v
    n += 2 * d + (d * h + h + h * d + d) + 2 * d  # prenorm, MLP, postnorm
    n += 9 * d * d + 2 * d + d + 1  # decoder: bias-free 3×3 conv + BatchNorm, 1×1 conv to one logit
    return n


def vit_block_params(d: int) -> int:
    """LN, qkv, proj, LN, MLP with hidden 4d."""
    return 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + d * 4 * d + 4 * d + 4 * d * d + d


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("dim,channels,bev", [(32, 16, 8), (16, 8, 4)])
def test_cvt_parameter_count_from_the_formula(dim, channels, bev):
    model = create_model("cvt", dim=dim, backbone_channels=channels, bev_size=bev)
    assert count(model) == cvt_params(dim=dim, backbone_channels=channels, bev_size=bev)


@pytest.mark.parametrize("latents,layers,attention,share", [(10, 6, "per_latent", True), (10, 6, "pooled", True),
                                                            (5, 6, "pooled", False), (3, 1, "pooled", True)])
def test_cvt_io_parameter_count_from_the_formula(latents, layers, attention, share):
    model = create_model("cvt_io", num_latents=latents, latent_layers=layers, latent_attention=attention,
                         share_weights=share)
    d = 32
    blocks = 1 if share else layers
    latent_array = latents * d + blocks * vit_block_params(d) + 2 * d  # embeddings, blocks, final LayerNorm
    assert count(model) == cvt_params(dim=d, backbone_channels=16, bev_size=8) + latent_array


def test_per_latent_and_pooled_have_the_same_parameters_and_differ_in_attention_flops_as_the_formula_says():
    n, layers, d, t = 3, 2, SMALL["dim"], SMALL["bev_size"] ** 2
    x = inputs(batch=1)
    flops = {}
    for attention in ("per_latent", "pooled"):
        model = create_model("cvt_io", **SMALL, num_latents=n, latent_layers=layers, latent_attention=attention).eval()
        flops[attention] = count_flops(lambda m=model: m(**x))
        flops[attention + "_params"] = count(model)
    assert flops["per_latent_params"] == flops["pooled_params"]
    # per layer: per-latent QKᵀ and AV over N·T cells, 2·(NT)²·d each; pooled: QKᵀ over T cells
    # (2·T²·d) and AV applied to each of the N latents (2·N·T²·d). Everything else is the same.
    per_layer = 4 * (n * t) ** 2 * d - (2 * t * t * d + 2 * n * t * t * d)
    assert flops["per_latent"] - flops["pooled"] == layers * per_layer


@pytest.mark.parametrize("name", MAP_MODELS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    kwargs = {"num_latents": 2, "latent_layers": 2} if name == "cvt_io" else {}
    model = create_model(name, **SMALL, **kwargs)
    x = inputs()
    logits = model(**x)
    assert logits.shape == (2, 1, SMALL["map_size"], SMALL["map_size"])
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing


@pytest.mark.parametrize("name", MAP_MODELS)
def test_builds_on_the_meta_device(name):
    with torch.device("meta"):
        model = create_model(name)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_the_output_depends_on_the_camera_extrinsics():
    torch.manual_seed(0)
    model = create_model("cvt", **SMALL).eval()
    x = inputs(batch=1)
    turned = dict(x)
    _, e = camera_matrices(image_size=16, yaws=np.linspace(0, 2 * math.pi, 3, endpoint=False) + 0.5)
    turned["extrinsics"] = torch.tensor(e, dtype=torch.float32)[None]
    with torch.no_grad():
        assert not torch.allclose(model(**x), model(**turned))


def test_the_central_ray_points_along_the_camera_yaw():
    model = create_model("cvt", **SMALL)
    for yaw in (0.0, math.pi / 2):
        k, e = camera_matrices(image_size=16, yaws=np.array([yaw]))
        rays, centres = model.camera_rays(torch.tensor(k, dtype=torch.float32)[None], torch.tensor(e, dtype=torch.float32)[None],
                                          1, 1, (16, 16))  # one cell: the principal point
        assert torch.allclose(rays[0, 0, 0], torch.tensor([math.cos(yaw), math.sin(yaw), 0.0]), atol=1e-6)
        assert torch.allclose(centres[0, 0], torch.tensor([0.0, 0.0, 1.5 / 8.0]), atol=1e-6)  # metres / extent


def test_bad_latent_attention_is_refused():
    with pytest.raises(ValueError, match="latent_attention = 'both'"):
        create_model("cvt_io", latent_attention="both")
