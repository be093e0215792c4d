"""`minbert pretrain`: BERT's masking, the MLM head against transformers, an HF folder that
fine-tuning and transformers load, exact resumption, clear refusals."""
import json

import pytest
import torch
from safetensors.torch import load_file

from minbert import BertModel, cli
from minbert.build import checked_config
from minbert.data import DataError
from minbert.mlm import IGNORE, MaskedLMHead, mask_tokens, pretrain
from minbert.runs import RunError

from helpers import tiny_config_values, write_task_files


def test_masking_follows_berts_recipe():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (200, 64))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    attention = torch.ones_like(ids)
    attention[:, 50:] = 0  # padding
    inputs, labels = mask_tokens(ids, attention, [0, 2, 3, 4], 4, 1000, 0.15, generator)
    chosen = labels != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, 50:].any()  # never special or padding
    eligible = 200 * 48
    assert abs(int(chosen.sum()) / eligible - 0.15) < 0.01
    assert (labels[chosen] == ids[chosen]).all()
    share_masked = (inputs[chosen] == 4).float().mean()
    share_kept = (inputs[chosen] == ids[chosen]).float().mean()
    assert abs(share_masked - 0.8) < 0.02 and abs(share_kept - 0.1) < 0.02 + 0.001
    assert (inputs[~chosen] == ids[~chosen]).all()
    again = mask_tokens(ids, attention, [0, 2, 3, 4], 4, 1000, 0.15,
                        torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)
    _, few = mask_tokens(ids[:2], attention[:2], [0, 2, 3, 4], 4, 1000, 1e-9, generator)
    assert int((few != IGNORE).sum()) == 1  # a batch always has one token to predict


def test_the_mlm_head_equals_transformers(tmp_path, tiny_checkpoint):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig.from_pretrained(str(tiny_checkpoint))
    torch.manual_seed(0)
    theirs = transformers.BertForMaskedLM(config).eval()
    theirs.save_pretrained(tmp_path / "hf")
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    ours = BertModel.from_pretrained(tmp_path / "hf", verbose=False)
    assert ours.load_hf_state_dict(state)["unexpected"] == []  # cls.* is expected
    head = MaskedLMHead(ours)
    assert head.load_hf(state)
    ids = torch.tensor([[2, 5, 7, 4, 9, 3], [2, 11, 12, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        hidden, _ = ours(ids, mask)
        assert torch.allclose(head(hidden), expected, atol=1e-5)


def pretrain_values(tmp_path, checkpoint, **pretrain_settings):
    data = tmp_path / "data"
    if not data.is_dir():
        data.mkdir()
        write_task_files(data)
    values = tiny_config_values(data, checkpoint, tmp_path / "finetune")
    values["pretrain"] = {"run_dir": str(tmp_path / "pre"), "epochs": 2, "lr": 1e-3,
                          "batch_size": 4, "max_length": 32, "held_out": 0.2, "log_every": 1,
                          "precision": "fp32", "warmup": 0.0, **pretrain_settings}
    return values


@pytest.mark.slow
def test_pretraining_writes_a_folder_that_finetuning_and_transformers_load(tmp_path,
                                                                           tiny_checkpoint):
    transformers = pytest.importorskip("transformers")
    values = pretrain_values(tmp_path, tiny_checkpoint, epochs=30, lr=3e-3)
    out = pretrain(checked_config(values))
    assert out == tmp_path / "pre" / "model"
    records = [json.loads(x) for x in (tmp_path / "pre" / "log.jsonl").read_text().splitlines()]
    start = records[0]
    assert start["type"] == "start" and start["mlm_head"] == "new"
    # every sentence of every split's file, each once (dev repeats train here: adds none)
    assert start["texts"]["sst-train"] == 8 and start["texts"]["sst-dev"] == 0
    assert {"sst-test", "quora-train", "sts-train"} <= start["texts"].keys()
    assert start["train_texts"] + start["held_out_texts"] == sum(start["texts"].values())
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(31))
    assert all(r["masked_tokens"] > 0 and r["mlm_loss"] > 0 for r in epochs)
    steps = [r["loss"] for r in records if r["type"] == "step"]
    # it learns its (few) texts: the training loss falls well below its start
    assert sum(steps[-12:]) / 12 < sum(steps[:12]) / 12 - 0.5
    assert not (tmp_path / "pre" / "checkpoint.pt").exists()

    # transformers' BertForMaskedLM reads the folder, head included, as we compute it
    theirs = transformers.BertForMaskedLM.from_pretrained(str(out)).eval()
    ours = BertModel.from_pretrained(out, strict=True)
    head = MaskedLMHead(ours)
    assert head.load_hf(load_file(str(out / "model.safetensors")))
    ids = torch.tensor([[2, 5, 4, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(head(ours(ids)[0]), theirs(input_ids=ids).logits, atol=1e-5)
    # and fine-tuning starts from it
    import copy
    finetune = copy.deepcopy(values)
    finetune["model"]["checkpoint"] = str(out)
    from minbert.loading import build_model
    from minbert.tasks import build_tasks
    config = checked_config(finetune)
    model, _ = build_model(config, build_tasks(config))
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight,
                       ours.embeddings.word_embeddings.weight)
    with pytest.raises(RunError, match="set pretrain.checkpoint"):
        pretrain(config)  # from its own output: it says what to set
    # the same command again: finished, nothing redone; other settings: refused
    assert pretrain(checked_config(values)) == out
    values["pretrain"]["lr"] = 5e-4
    with pytest.raises(RunError, match="pretrain.lr"):
        pretrain(checked_config(values))


@pytest.mark.slow
def test_a_stopped_pretraining_resumes_to_the_same_weights(tmp_path, tiny_checkpoint):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = pretrain_values(tmp_path / "a", tiny_checkpoint, checkpoint_every=2)
    pretrain(checked_config(whole))
    parts = pretrain_values(tmp_path / "b", tiny_checkpoint, checkpoint_every=2, max_steps=3)
    assert pretrain(checked_config(parts)) == tmp_path / "b" / "pre"  # stopped after 3 steps
    parts["pretrain"]["max_steps"] = 0  # a resumable change
    assert pretrain(checked_config(parts)) == tmp_path / "b" / "pre" / "model"
    a = load_file(str(tmp_path / "a" / "pre" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "pre" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "b" / "pre" / "log.jsonl").read_text()
    assert log.count('"type": "resume"') == 1 and log.count('"type": "start"') == 1


def test_a_missing_test_file_is_left_out_with_a_warning(tmp_path, tiny_checkpoint):
    from minbert.mlm import read_texts
    values = pretrain_values(tmp_path, tiny_checkpoint)
    values["tasks"]["quora"]["test_file"] = "quora-test-student.csv"  # not in this copy
    with pytest.warns(UserWarning, match="quora-test-student.csv not found"):
        texts, counts = read_texts(checked_config(values))
    assert "quora-test" not in counts and counts["sst-test"] == 0 and texts


def test_bad_text_files_are_named(tmp_path, tiny_checkpoint, capsys):
    values = pretrain_values(tmp_path, tiny_checkpoint, task_splits=[],
                             text_files=["missing.txt"])
    with pytest.raises(DataError, match="missing.txt: no such file"):
        pretrain(checked_config(values))
    (tmp_path / "data" / "bad.txt").write_bytes(b"a fine line\nbad \xff byte\n")
    values["pretrain"]["text_files"] = ["bad.txt"]
    with pytest.raises(DataError, match=r"bad.txt, line 2: not UTF-8"):
        pretrain(checked_config(values), overwrite=True)
    with pytest.raises(Exception, match="pretrain.task_splits"):
        checked_config(pretrain_values(tmp_path, tiny_checkpoint, task_splits=["val"]))
    config = tmp_path / "c.toml"
    config.write_text('[pretrain]\nmask_prob = 1.5\n')
    assert cli.main(["pretrain", "--config", str(config)]) == 2
    assert "pretrain.mask_prob" in capsys.readouterr().err
