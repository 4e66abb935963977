"""Every registered VQA model: forward + backward, de-duplication, encoders and fusion blocks."""

import numpy as np
import pytest
import torch

from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.models import MODELS, create_model
from vqalab.models.encoders import build_question_encoder, embedding_matrix_from_text
from vqalab.models.layers import StackedAttentionHop, TuckerFusion
from vqalab.registry import ConfigError
from vqalab.train import fit

# The registry also holds other families (FER): image VQA models are those taking questions, answers
# and an image encoder (scene-graph and question-only models: tests/test_vqa_graph.py).
VQA_MODELS = [n for n in MODELS.names() if {"vocab_size", "num_answers", "image_encoder"} <= set(MODELS.parameters(n))]
VOCAB, ANSWERS, BATCH = 30, 7, 6
TINY_CNN = (8, 8, 16)


def make_batch(image_size: int = 32, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 1, 5, 2, 4])
    question = torch.randint(2, VOCAB, (BATCH, 5), generator=gen)
    question[torch.arange(5)[None, :] >= lengths[:, None]] = 0  # padding after each question
    return {"image": torch.randn(BATCH, 3, image_size, image_size, generator=gen), "question": question,
            "question_len": lengths, "image_id": torch.tensor([4, 4, 9, 9, 9, 1])}


def test_the_vqa_family_is_registered():
    assert {"vqa_mean_mlp", "vqa_lstm_mlp", "vqa_spatial_att", "vqa_spatial_att_qpool", "vqa_san",
            "vqa_att_mutan", "vqa_ban"} <= set(VQA_MODELS)


@pytest.mark.parametrize("name", VQA_MODELS)
def test_forward_backward_gives_finite_logits_and_a_gradient_for_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, vocab_size=VOCAB, num_answers=ANSWERS, cnn_channels=TINY_CNN)
    logits = model(**make_batch())
    assert logits.shape == (BATCH, ANSWERS)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.arange(BATCH) % ANSWERS).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)


@pytest.mark.parametrize("name", VQA_MODELS)
def test_documented_arguments(name):
    doc = MODELS.describe(name)
    for arg in MODELS.parameters(name):
        assert arg in doc, f"{name}: argument '{arg}' is not documented"


@pytest.mark.parametrize("name", VQA_MODELS)
def test_image_deduplication_does_not_change_the_output(name):
    torch.manual_seed(0)
    model = create_model(name, vocab_size=VOCAB, num_answers=ANSWERS, cnn_channels=TINY_CNN).eval()
    batch = make_batch()
    # Questions sharing an image id get the same pixels, as the data guarantees.
    batch["image"] = batch["image"][torch.tensor([0, 0, 2, 2, 2, 5])]
    calls = []
    model.image_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        deduplicated = model(**batch)
        plain = model(**{**batch, "image_id": None})
    assert calls == [3, BATCH]  # 3 distinct images encoded, then all 6
    assert torch.allclose(deduplicated, plain, atol=1e-5)


@pytest.mark.parametrize("name", VQA_MODELS)
def test_precomputed_features_skip_the_image_encoder(name):
    model = create_model(name, vocab_size=VOCAB, num_answers=ANSWERS, image_dim=24)
    assert not any(n.startswith("image_encoder.") for n, _ in model.named_parameters())
    batch = {**make_batch(), "image": torch.randn(BATCH, 24, 3, 3)}
    assert model(**batch).shape == (BATCH, ANSWERS)
    with pytest.raises(ValueError, match=r"expected precomputed image features \(B, 24, h, w\)"):
        model(**{**batch, "image": torch.randn(BATCH, 3, 32, 32)})


def test_image_encoder_settings_that_could_never_run_are_errors():
    with pytest.raises(ConfigError, match="already yields image features of size 512"):
        create_model("vqa_san", vocab_size=VOCAB, num_answers=ANSWERS, image_dim=512, image_encoder="resnet18")
    with pytest.raises(ConfigError, match="'precomputed' needs image features from the data"):
        create_model("vqa_san", vocab_size=VOCAB, num_answers=ANSWERS, image_encoder="precomputed")
    with pytest.raises(ConfigError, match="image_encoder = 'resnet17': expected Literal"):
        create_model("vqa_san", vocab_size=VOCAB, num_answers=ANSWERS, image_encoder="resnet17")


def test_frozen_resnet_map_pooled_and_frozen():
    model = create_model("vqa_spatial_att", vocab_size=VOCAB, num_answers=ANSWERS, image_encoder="resnet18",
                         freeze_image=True, pool_image=True)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    model.train()
    assert not model.image_encoder.training  # frozen BatchNorm statistics stay as loaded
    assert model.encode_image(make_batch()["image"]).shape == (BATCH, 512, 1, 1)
    unpooled = create_model("vqa_san", vocab_size=VOCAB, num_answers=ANSWERS, image_encoder="resnet18")
    assert unpooled.encode_image(torch.randn(2, 3, 64, 64)).shape == (2, 512, 2, 2)


def test_image_weights_from_a_local_file(tmp_path):
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("vqa_lstm_mlp", vocab_size=VOCAB, num_answers=ANSWERS, image_encoder="resnet18",
                         image_weights=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.image_encoder.body[0].weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError, match="weights file not found: .*missing.pth"):
        create_model("vqa_lstm_mlp", vocab_size=VOCAB, num_answers=ANSWERS, image_encoder="resnet18",
                     image_weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("kind", ["mean", "lstm", "gru"])
def test_question_vector_ignores_padding(kind):
    torch.manual_seed(0)
    encoder = build_question_encoder(kind, vocab_size=VOCAB, embed_dim=8, hidden_dim=12)
    question = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0]])
    short = encoder(question, torch.tensor([3]))
    long = encoder(padded, torch.tensor([3]))
    assert torch.allclose(short.vector, long.vector, atol=1e-6)
    assert long.states.shape == (1, 5, encoder.out_dim)
    assert long.mask.tolist() == [[True, True, True, False, False]]
    if kind == "mean":
        assert torch.allclose(short.vector, encoder.embed.weight[[5, 6, 7]].mean(0, keepdim=True))
    else:
        assert torch.allclose(short.vector, short.states[:, -1], atol=1e-6)  # the last real token's state


def test_embedding_weights_from_a_local_file(tmp_path):
    tokens = ["<pad>", "<unk>", "what", "color", "zebra"]
    (tmp_path / "vectors.txt").write_text("what 1 2 3\ncolor 4 5 6\nother 7 8 9\n")
    matrix, found = embedding_matrix_from_text(tokens, str(tmp_path / "vectors.txt"), embed_dim=3)
    assert found == 2
    torch.save(matrix, tmp_path / "embed.pt")
    model = create_model("vqa_lstm_mlp", vocab_size=5, num_answers=ANSWERS, embed_dim=3,
                         embedding_weights=str(tmp_path / "embed.pt"), freeze_embedding=True)
    weight = model.question_encoder.embed.weight
    assert weight[2].tolist() == [1, 2, 3] and weight[3].tolist() == [4, 5, 6] and weight[4].abs().sum() == 0
    assert not weight.requires_grad
    with pytest.raises(ValueError, match=r"embed.pt: embedding matrix has shape \(5, 3\), expected \(5, 4\)"):
        create_model("vqa_lstm_mlp", vocab_size=5, num_answers=ANSWERS, embed_dim=4,
                     embedding_weights=str(tmp_path / "embed.pt"))


def test_stacked_attention_hop_follows_the_san_formula():
    torch.manual_seed(0)
    hop = StackedAttentionHop(dim=4, att_dim=3)
    regions, query = torch.randn(2, 5, 4), torch.randn(2, 4)
    out, p = hop(regions, query)
    W_I, W_Q, b_A = hop.image_proj.weight, hop.query_proj.weight, hop.query_proj.bias
    W_P, b_P = hop.score.weight, hop.score.bias
    for b in range(2):
        h_A = torch.tanh(regions[b] @ W_I.T + (W_Q @ query[b] + b_A))  # (5, 3)
        p_I = torch.softmax(h_A @ W_P[0] + b_P, dim=0)  # (5,)
        assert torch.allclose(p[b], p_I, atol=1e-6)
        assert torch.allclose(out[b], p_I @ regions[b] + query[b], atol=1e-6)


def test_tucker_fusion_is_a_sum_of_rank_one_products():
    torch.manual_seed(0)
    fusion = TuckerFusion(dim_v=5, dim_q=4, dim_hv=3, dim_hq=2, dim_mm=6, rank=3)
    v, q = torch.randn(2, 5), torch.randn(2, 4)
    x_v, x_q = torch.tanh(fusion.linear_v[0](v)), torch.tanh(fusion.linear_q(q))
    expected = torch.zeros(2, 6)
    for r in range(3):
        rows = slice(r * 6, (r + 1) * 6)  # W_hv^r and W_hq^r
        expected += (x_q @ fusion.rank_q.weight[rows].T + fusion.rank_q.bias[rows]) * \
                    (x_v @ fusion.rank_v.weight[rows].T + fusion.rank_v.bias[rows])
    assert torch.allclose(fusion(v, q), expected, atol=1e-6)


@pytest.fixture(scope="module")
def easy_vqa_small():
    return build_data({"name": "easy_vqa", "max_train_samples": 128, "max_val_samples": 64})


@pytest.mark.parametrize("name", VQA_MODELS)
def test_every_model_trains_on_easy_vqa_with_the_training_loop(name, easy_vqa_small, tmp_path):
    cfg = build_config({
        "experiment": "easy", "name": name, "runs_root": str(tmp_path), "seed": 1,
        "model": {"name": name, "cnn_channels": [8, 16, 16]},
        "train": {"epochs": 2, "batch_size": 32, "progress": False}, "optim": {"lr": 3e-3},
    })
    summary = fit(cfg, data=easy_vqa_small).summary
    assert summary["status"] == "completed", summary.get("error")
    assert summary["epochs"] == 2 and summary["steps"] == 8
    assert np.isfinite(summary["first_train_loss"]) and 0.0 <= summary["best_val_acc"] <= 1.0
    # Two epochs on the same 128 questions lower the training loss (13 answers: chance is ln 13 ≈ 2.56).
    assert summary["best_train_loss"] < summary["first_train_loss"]
