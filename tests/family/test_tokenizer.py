"""The character tokenizer: round trip, and files that transformers loads as a fast tokenizer."""

from __future__ import annotations

import json

import pytest

from mergehub.family import tokenizer as tok


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save_tokenizer(path)
    return path


def test_round_trip_of_every_character():
    text = tok.CHARACTERS + "reverse:abcd=dcba"
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.UNK_ID not in ids
    assert tok.decode(ids + [tok.EOS_ID, tok.PAD_ID]) == text
    assert tok.encode("aB") == [tok.VOCAB["a"], tok.UNK_ID]


def test_files_and_config(tokenizer_dir):
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == sorted(tok.TOKENIZER_FILES)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    # transformers 5.x's own save would write "TokenizersBackend", which 4.x cannot load
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_input_names"] == ["input_ids", "attention_mask"]
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<s>", "</s>", "<pad>")


def test_saved_files_are_stable(tmp_path, tokenizer_dir):
    tok.save_tokenizer(tmp_path)
    for name in tok.TOKENIZER_FILES:
        assert (tmp_path / name).read_bytes() == (tokenizer_dir / name).read_bytes()


@pytest.mark.parametrize("loader", ["AutoTokenizer", "PreTrainedTokenizerFast"])
def test_transformers_loads_it(tokenizer_dir, loader):
    import transformers

    hf = getattr(transformers, loader).from_pretrained(str(tokenizer_dir))
    prompt = "sort:dbca="
    assert hf(prompt)["input_ids"] == tok.encode(prompt)  # no BOS added: as in training
    assert hf(prompt, add_special_tokens=False)["input_ids"] == tok.encode(prompt)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.BOS_ID, tok.EOS_ID, tok.PAD_ID)
    assert hf.decode(tok.encode("abcd") + [tok.EOS_ID], skip_special_tokens=True) == "abcd"
    assert len(hf) == tok.VOCAB_SIZE
    batch = hf(["sort:ab=", prompt], padding=True)
    assert batch["input_ids"][0][:2] == [tok.PAD_ID, tok.PAD_ID]  # left padding for generation
    assert batch["attention_mask"][0][:3] == [0, 0, 1]
