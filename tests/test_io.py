"""vqalab.io: the one JSON digest (config hashes, data fingerprints, cache and freeze keys keep
their values) and the one JSON record reader."""

import gc
import hashlib
import json
from pathlib import Path

import pytest

from vqalab.io import json_digest, load_large_json, read_json_record, write_atomically
from vqalab.registry import ConfigError

VALUES = [
    {"optim.lr": 1e-3, "model.name": "ir_vit", "train.device": "cpu", "seed": 0},
    {"name": "easy_vqa", "counts": {"train": 38575, "val": 9673}, "root": Path("/data/easy_vqa")},
    [["questions.json", 1234, 1700000000000000000], ["images", 38575, 1700000000000000001]],
    {"unicode": "caf\u00e9 \u2013 \u00e5", "nested": {"b": [1, 2.5, None, True], "a": "x"}},
]


def test_the_digest_is_the_sha256_of_sorted_json_and_keeps_the_values_recorded_before_it():
    # The formula config_hash and the report's freeze keys wrote into summary.json before io.json_digest.
    for value in VALUES:
        before = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        assert json_digest(value, length=16) == before[:16]
        assert json_digest(value, length=12) == before[:12]
    assert json_digest({"a": 1}, length=16) == "f9d86028c6e0d64e"  # sha256('{"a": 1}'): it may not drift


def test_key_order_is_irrelevant_and_a_changed_value_is_a_new_digest():
    a = {"model": {"name": "cvt", "dim": 64}, "optim": {"lr": 0.1}}
    b = {"optim": {"lr": 0.1}, "model": {"dim": 64, "name": "cvt"}}
    assert json_digest(a, length=16) == json_digest(b, length=16)
    assert json_digest(a, length=16) != json_digest({**a, "optim": {"lr": 0.2}}, length=16)
    assert len(json_digest(a, length=40)) == 40


def test_a_record_that_is_not_a_json_object_is_refused_naming_the_file(tmp_path):
    good = tmp_path / "summary.json"
    write_atomically(good, lambda f: f.write(b'{"status": "completed"}'))
    assert read_json_record(good) == {"status": "completed"}
    for name, content, expected in [("cut.json", b'{"status": "compl', "not valid JSON"),
                                    ("list.json", b"[1, 2]", "expected a JSON object, got list"),
                                    ("binary.json", b"\xff\xfe", "not UTF-8 text")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=expected) as err:
            read_json_record(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)


def test_large_json_is_parsed_as_json_does_with_the_collector_back_on_after(tmp_path):
    path = tmp_path / "annotations.json"
    value = {"annotations": [{"question_id": i, "answers": [{"answer": "yes"}] * 3} for i in range(2000)],
             "info": {"version": 2.0, "text": "caf\u00e9 \U0001F600"}}
    path.write_text(json.dumps(value))
    assert load_large_json(path) == value
    assert gc.isenabled()
    path.write_text('{"annotations": [1, 2')
    with pytest.raises(json.JSONDecodeError):
        load_large_json(path)
    assert gc.isenabled()
    path.write_text("[]")
    gc.disable()  # a caller that paused the collector itself finds it still paused
    try:
        assert load_large_json(path) == [] and not gc.isenabled()
    finally:
        gc.enable()
