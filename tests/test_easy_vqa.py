import torch

from vqalab.data import build_data
from vqalab.data.samplers import epoch_batches
from vqalab.text import PAD_INDEX, UNK_INDEX, Vocabulary, tokenize


def test_tokenizer_and_vocabulary():
    assert tokenize("What color is the shape?") == ["what", "color", "is", "the", "shape"]
    vocab = Vocabulary.build(["is there a red shape?", "is there a circle?"])
    assert vocab.tokens[:2] == ["<pad>", "<unk>"]
    assert vocab.tokens[2:5] == ["a", "is", "there"]  # most frequent first, ties alphabetical
    assert vocab.encode("is there a zebra?") == [vocab.index["is"], vocab.index["there"], vocab.index["a"], UNK_INDEX]


def test_easy_vqa_splits_shapes_and_answers():
    data = build_data({"name": "easy_vqa", "max_train_samples": 200, "max_val_samples": 50})
    assert len(data.train) == 200 and len(data.val) == 50
    assert len(data.class_names) == 13 and {"circle", "yes", "no", "teal"} <= set(data.class_names)
    assert data.model_kwargs == {"vocab_size": len(data.vocab), "num_answers": 13}
    item = data.train[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    batch = data.collate([data.train[i] for i in range(6)])
    assert batch["question"].shape[0] == 6 and batch["question"].dtype == torch.long
    assert batch["question_len"].max() == batch["question"].shape[1]
    for row, length in zip(batch["question"], batch["question_len"]):
        assert (row[length:] == PAD_INDEX).all() and (row[:length] != PAD_INDEX).all()
    assert batch["target"].max() < 13
    assert list(data.train.targets[:6]) == batch["target"].tolist()


def test_full_easy_vqa_sizes_and_train_only_vocabulary():
    data = build_data({"name": "easy_vqa"})
    assert (len(data.train), len(data.val)) == (38_575, 9_673)
    # The vocabulary comes from training questions only: no validation token is missing from it here,
    # because easy-VQA's templates are shared; any unseen word would map to <unk>.
    assert "<unk>" in data.vocab and len(data.vocab) < 40


def test_grouped_batches_keep_images_together_and_depend_only_on_seed_and_epoch():
    groups = [i // 4 for i in range(40)]  # 10 images with 4 questions each
    batches = epoch_batches(40, 8, seed=3, epoch=1, groups=groups)
    assert sorted(i for b in batches for i in b) == list(range(40))
    assert all(len({groups[i] for i in b}) == 2 for b in batches)  # 8 questions = 2 whole images
    assert batches == epoch_batches(40, 8, seed=3, epoch=1, groups=groups)
    assert batches != epoch_batches(40, 8, seed=3, epoch=2, groups=groups)


def test_pad_questions_pads_each_row_to_the_longest():
    from vqalab.text import PAD_INDEX, pad_questions

    padded, lengths = pad_questions([[4, 5, 6], [7], [8, 9]])
    assert lengths.tolist() == [3, 1, 2] and padded.dtype == torch.long
    assert padded.tolist() == [[4, 5, 6], [7, PAD_INDEX, PAD_INDEX], [8, 9, PAD_INDEX]]
