"""FER models: parameter counts from an independent formula, shapes, block semantics, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqalab.config import build_config
from vqalab.models import MODELS, create_model
from vqalab.models.fer import IRBackbone, load_backbone_weights
from vqalab.models.layers import ClassAttentionBlock, DropPath, TransformerBlock
from vqalab.registry import ConfigError
from vqalab.runs import config_hash

FER_MODELS = [n for n in MODELS.names() if {"num_classes", "img_size"} <= set(MODELS.parameters(n))]
TRANSFORMER_MODELS = ["ir_vit", "ir_cls"]

# Written from the face.evoLVe / InsightFace description, not from the model code.
UNITS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 14, 3]}


def ir_unit_params(c_in: int, c_out: int, se: bool) -> int:
    """bottleneck_IR: BN(c_in), conv3×3 c_in→c_out, PReLU(c_out), conv3×3 c_out→c_out, BN(c_out),
    a 1×1 conv + BN shortcut when channels change, SE = two bias-free 1×1 convs c_out ↔ c_out / 16
    (at least 1)."""
    n = 2 * c_in + 9 * c_in * c_out + c_out + 9 * c_out * c_out + 2 * c_out
    if c_in != c_out:
        n += c_in * c_out + 2 * c_out
    if se:
        n += 2 * c_out * max(1, c_out // 16)
    return n


def transformer_block_params(d: int, mlp_ratio: int = 4) -> int:
    """LN, qkv (3d² + 3d), proj (d² + d), LN, fc1 (d·4d + 4d), fc2 (4d·d + d)."""
    h = mlp_ratio * d
    return 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + d * h + h + h * d + d


def expected_params(*, depth: int, backbone_depth: int = 50, width: float = 1.0, img_size: int = 112,
                    se: bool = False, num_classes: int = 7) -> int:
    ch = [round(c * width) for c in (64, 128, 256, 512)]
    n = 27 * ch[0] + 2 * ch[0] + ch[0]  # stem conv 3→c0 (3×3), BN, PReLU
    c_in = ch[0]
    for units, c in zip(UNITS[backbone_depth], ch):
        for _ in range(units):
            n += ir_unit_params(c_in, c, se)
            c_in = c
    d = ch[-1]
    tokens = (img_size // 16) ** 2
    n += d + (tokens + 1) * d  # class token, position embedding
    n += depth * transformer_block_params(d)
    n += 2 * d + d * num_classes + num_classes  # final LN, head
    return n


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
@pytest.mark.parametrize("depth", [2, 4, 6, 8])
def test_ir50_models_build_with_the_independent_parameter_count(name, depth):
    model = create_model(name, depth=depth)
    assert count(model) == expected_params(depth=depth)
    assert len(model.blocks) == depth
    assert model.pos_embed.shape == (1, 50, 512)  # 49 tokens of the 7×7 map + the class token


def test_ir50_vit_depth8_size_and_equal_cls_size():
    # IR-50 trunk 30.73 M (face.evoLVe IR-50 without its embedding layer) + 8 blocks of 3.15 M.
    vit, cls = create_model("ir50_vit"), create_model("ir50_cls")
    assert count(vit.backbone) == 30_727_360
    assert count(vit) == count(cls) == 55_977_159
    assert {k: v.shape for k, v in vit.state_dict().items()} == {k: v.shape for k, v in cls.state_dict().items()}


@pytest.mark.parametrize("backbone_depth,width,img_size,se", [(18, 0.25, 64, False), (34, 0.5, 48, True),
                                                               (50, 0.125, 32, True)])
def test_small_members_parameter_count(backbone_depth, width, img_size, se):
    model = create_model("ir50_cls", depth=3, backbone_depth=backbone_depth, width=width, img_size=img_size, se=se)
    assert count(model) == expected_params(depth=3, backbone_depth=backbone_depth, width=width,
                                           img_size=img_size, se=se)


def test_ir50_backbone_map_and_token_shapes():
    backbone = IRBackbone(depth=50).eval()
    with torch.no_grad():
        fmap = backbone(torch.randn(1, 3, 112, 112))
    assert fmap.shape == (1, 512, 7, 7)
    model = create_model("ir50_cls", depth=2, backbone_depth=18, width=0.25, img_size=64)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(3, 3, 64, 64))
        logits = model(torch.randn(3, 3, 64, 64))
    assert feats.shape == (3, 128) and logits.shape == (3, 7)


SMALL_MEMBERS = [
    {"backbone_depth": 18, "width": 0.125, "img_size": 32, "depth": 2},
    {"backbone_depth": 34, "width": 0.125, "img_size": 48, "depth": 1, "se": True, "attn_drop": 0.1, "drop_path": 0.2},
    {"backbone_depth": 50, "width": 0.0625, "img_size": 32, "depth": 2, "num_heads": 2, "drop_path": 0.1},
]


@pytest.mark.parametrize("name", FER_MODELS)
@pytest.mark.parametrize("member", range(len(SMALL_MEMBERS)))
def test_every_family_member_forward_backward(name, member):
    kwargs = SMALL_MEMBERS[member] if name in TRANSFORMER_MODELS else {"img_size": SMALL_MEMBERS[member]["img_size"]}
    torch.manual_seed(member)
    model = create_model(name, num_classes=5, **kwargs).train()
    size = kwargs["img_size"]
    logits = model(torch.randn(4, 3, size, size))
    assert logits.shape == (4, 5)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"


def test_self_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    block = TransformerBlock(dim=32, num_heads=4).eval()
    reference = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    reference.in_proj_weight.data.copy_(block.attn.qkv.weight)
    reference.in_proj_bias.data.copy_(block.attn.qkv.bias)
    reference.out_proj.weight.data.copy_(block.attn.proj.weight)
    reference.out_proj.bias.data.copy_(block.attn.proj.bias)
    x = torch.randn(2, 6, 32)
    h = block.norm1(x)
    torch.testing.assert_close(block.attn(h), reference(h, h, h, need_weights=False)[0])
    # Full block: attention residual, then the MLP residual on every token.
    y = x + reference(h, h, h, need_weights=False)[0]
    expected = y + block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(block.norm2(y))))
    torch.testing.assert_close(block(x), expected)


def test_class_attention_block_updates_only_the_class_token():
    torch.manual_seed(0)
    block = ClassAttentionBlock(dim=32, num_heads=4).eval()
    reference = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    reference.in_proj_weight.data.copy_(block.attn.qkv.weight)
    reference.in_proj_bias.data.copy_(block.attn.qkv.bias)
    reference.out_proj.weight.data.copy_(block.attn.proj.weight)
    reference.out_proj.bias.data.copy_(block.attn.proj.bias)
    x = torch.randn(2, 6, 32)
    out = block(x)
    assert out.shape == x.shape
    assert torch.equal(out[:, 1:], x[:, 1:])  # patch tokens pass through unchanged
    h = block.norm1(x)
    cls = x[:, :1] + reference(h[:, :1], h, h, need_weights=False)[0]  # query: class token; keys: all
    expected = cls + block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(block.norm2(cls))))
    torch.testing.assert_close(out[:, :1], expected)
    # Keys and values come from every token: changing a patch token changes the class token.
    x2 = x.clone()
    x2[:, 4] = torch.randn(2, 32)  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(block(x2)[:, 0], out[:, 0])


def test_vit_and_class_attention_blocks_have_the_same_parameter_shapes():
    vit, cls = TransformerBlock(dim=64, num_heads=4), ClassAttentionBlock(dim=64, num_heads=4)
    assert {k: v.shape for k, v in vit.state_dict().items()} == {k: v.shape for k, v in cls.state_dict().items()}
    assert count(vit) == transformer_block_params(64)


def test_drop_path_drops_whole_samples_in_training_only():
    torch.manual_seed(0)
    drop = DropPath(0.5)
    x = torch.ones(2000, 3, 4)
    out = drop(x)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # kept samples scaled by 1 / (1 - 0.5)
    assert (per_sample.min(1).values == per_sample.max(1).values).all()  # whole samples
    assert abs(per_sample[:, 0].mean().item() - 1.0) < 0.1
    assert torch.equal(drop.eval()(x), x)


def test_drop_path_rate_rises_linearly_over_blocks():
    model = create_model("ir50_vit", depth=5, backbone_depth=18, width=0.125, img_size=32, drop_path=0.2)
    rates = [block.drop_path.rate for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_wrong_input_size_names_img_size():
    model = create_model("ir50_vit", depth=1, backbone_depth=18, width=0.125, img_size=32)
    with pytest.raises(ValueError, match="img_size 32 got \\(64, 64\\)"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("kwargs,message", [
    ({"backbone_depth": 20}, "backbone_depth = 20: expected one of"),
    ({"img_size": 100}, "img_size = 100: expected a multiple of 16"),
    ({"num_heads": 3}, "num_heads = 3 does not divide the token dim 512"),
    ({"attn_drop": 1.0}, "attn_drop = 1.0"),
    ({"width": 0.0}, "width = 0.0"),
])
def test_bad_model_options_fail_with_clear_messages(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model("ir50_cls", depth=1, **kwargs)


def test_unknown_keyword_is_rejected_by_the_registry():
    with pytest.raises(ConfigError, match="unknown key 'dept'.*did you mean 'depth'"):
        create_model("ir50_vit", dept=2)


def test_backbone_weights_load_from_a_face_evolve_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = IRBackbone(depth=18, width=0.125)
    # face.evoLVe checkpoints hold the trunk plus an embedding ``output_layer``; DataParallel adds "module.".
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.output_layer.3.weight"] = torch.zeros(8, 8)
    torch.save(state, tmp_path / "ir.pth")
    model = create_model("ir50_vit", depth=1, backbone_depth=18, width=0.125, img_size=32,
                         backbone_weights=str(tmp_path / "ir.pth"))
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key

    wrong = IRBackbone(depth=34, width=0.125)
    torch.save(wrong.state_dict(), tmp_path / "ir34.pth")
    with pytest.raises(ValueError, match="ir34.pth: weights do not match the IR backbone: missing"):
        load_backbone_weights(IRBackbone(depth=18, width=0.125), str(tmp_path / "ir34.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone_weights(source, str(tmp_path / "nope.pth"))


def test_pixel_linear_is_logistic_regression_on_pixels():
    model = create_model("fer_pixel_linear", img_size=16)
    assert count(model) == 3 * 16 * 16 * 7 + 7
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), x.flatten(1) @ model.head.weight.T + model.head.bias)


@pytest.mark.parametrize(("former", "name"), [("ir50_vit", "ir_vit"), ("ir50_cls", "ir_cls")])
def test_former_ir50_names_build_the_same_model_and_the_same_run(former, name):
    kwargs = {"depth": 1, "backbone_depth": 18, "width": 0.125, "img_size": 32}
    torch.manual_seed(0)
    old = create_model(former, **kwargs)
    torch.manual_seed(0)
    new = create_model(name, **kwargs)
    assert type(old) is type(new) and old.state_dict().keys() == new.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    assert former not in MODELS.names() and name in MODELS.names()  # listed once, by its name
    model = {k: v for k, v in kwargs.items() if k != "img_size"}  # in a config, img_size comes from the data
    same = [build_config({"model": {"name": n, **model}, "data": {"name": "synthetic_faces"}}) for n in (former, name)]
    assert config_hash(same[0]) == config_hash(same[1])
    with pytest.raises(ConfigError, match=f"unknown model '{former}x'.*did you mean '{former}'"):
        create_model(f"{former}x")


def test_an_alias_needs_a_registered_target_and_a_new_name():
    with pytest.raises(ValueError, match="the target must be registered"):
        MODELS.alias("ir50_vit", "ir_cls")  # taken already
    with pytest.raises(ValueError, match="the target must be registered"):
        MODELS.alias("something", "no_such_model")
