import pytest

from vqalab.config import build_config, load_config
from vqalab.params import parameter_table, parse_overrides
from vqalab.registry import ConfigError


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_defaults_file_and_overrides_apply_in_order(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 1e-3\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["train.epochs=5", "model.hidden_dim=64"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 5  # --set wins over the file
    assert cfg.train.batch_size == 128  # default kept
    assert cfg.model == {"name": "vqa_mean_mlp", "hidden_dim": 64}


def test_scientific_notation_reads_as_float():
    assert parse_overrides(["optim.lr=1e-3", "optim.eps=1E-8"]) == {"optim": {"lr": 1e-3, "eps": 1e-8}}


def test_unknown_key_names_file_key_and_nearest_valid_key(tmp_path):
    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "optim.lrr" in message and "did you mean 'optim.lr'" in message


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*did you mean 'train'"):
        load_config(write(tmp_path, "trian: {epochs: 2}\n"))


def test_wrong_type_names_key_value_and_expectation(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "train:\n  epochs: many\n"))
    assert "train.epochs" in str(err.value) and "'many'" in str(err.value) and "integer" in str(err.value)


def test_out_of_range_value_is_rejected():
    with pytest.raises(ConfigError, match=r"optim.lr = -0.1.*greater than 0"):
        build_config({"optim": {"lr": -0.1}})


def test_model_keywords_are_checked_against_the_builder():
    with pytest.raises(ConfigError, match=r"unknown key 'embed_dm'.*did you mean 'embed_dim'"):
        build_config({"model": {"name": "vqa_mean_mlp", "embed_dm": 8}})
    with pytest.raises(ConfigError, match=r"model.dropout = 'high': expected float"):
        build_config({"model": {"name": "vqa_mean_mlp", "dropout": "high"}})
    with pytest.raises(ConfigError, match=r"set from the data"):
        build_config({"model": {"name": "vqa_mean_mlp", "vocab_size": 10}})


def test_unknown_model_and_dataset_names_suggest_a_registered_one():
    with pytest.raises(ConfigError, match=r"unknown model 'vqa_mean_mpl'.*did you mean 'vqa_mean_mlp'"):
        build_config({"model": {"name": "vqa_mean_mpl"}})
    with pytest.raises(ConfigError, match=r"unknown data set 'easyvqa'.*did you mean 'easy_vqa'"):
        build_config({"data": {"name": "easyvqa"}})


def test_missing_params_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["optim.lr"])


def test_switching_model_drops_the_previous_models_keywords():
    cfg = build_config({"model": {"name": "vqa_mean_mlp", "hidden_dim": 32}})
    assert cfg.model["hidden_dim"] == 32
    # merge(defaults, {"model": {...}}) with the same name keeps keys; a name change replaces the section
    from vqalab.params import merge

    assert merge({"model": {"name": "a", "x": 1}}, {"model": {"name": "b"}}) == {"model": {"name": "b"}}


def test_parameter_table_documents_every_key():
    rows = parameter_table()
    keys = {r["key"] for r in rows}
    assert {"optim.lr", "optim.eps", "train.batch_size", "schedule.step_size", "seed"} <= keys
    assert all(r["meaning"] for r in rows), [r["key"] for r in rows if not r["meaning"]]
    lr = next(r for r in rows if r["key"] == "optim.lr")
    assert lr["default"] == 1e-3 and lr["range"]


def test_parameter_types_read_as_plain_types():
    from vqalab.params import parameter_rows

    types = {row["key"]: row["type"] for row in parameter_rows()}
    assert types["optim.betas"] == "tuple[float, float]"
    assert types["train.batch_size"] == "int or one of auto"
    assert not [key for key, kind in types.items() if "Annotated" in kind or "metadata" in kind]
