"""`minbert export`: the fine-tuned encoder as an HF folder (transformers loads it and gives
the same outputs) with the heads beside it; never written into the run it comes from."""
import json

import numpy as np
import pytest
import torch

import minbert
from minbert import cli
from minbert.build import checked_config
from minbert.loading import load_run
from minbert.training import train

from helpers import tiny_config_values, write_task_files


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("export")
    (root / "data").mkdir()
    values = tiny_config_values(write_task_files(root / "data"), tiny_checkpoint, root / "run",
                                epochs=1)
    values["tasks"]["sts"]["pair_encoding"] = "bi"  # a two-segment graph too
    values["tasks"]["quora"]["pair_encoding"] = "both"  # and a three-segment one
    train(checked_config(values))
    return root / "run"


def test_export_loads_in_transformers_with_equal_outputs(run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from minbert.export import load_heads
    from minbert.tokenizer import Tokenizer
    assert cli.main(["export", str(run), str(tmp_path / "hf")]) == 0
    model = load_run(run).model
    theirs = transformers.BertModel.from_pretrained(str(tmp_path / "hf")).eval()
    batch = Tokenizer.from_pretrained(tmp_path / "hf")(["the movie is good", "a cat"])
    with torch.no_grad():
        ours = model.encoder(**batch)
        reference = theirs(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[0][real], reference.last_hidden_state[real], atol=1e-5,
                               rtol=0)
    heads = load_heads(tmp_path / "hf")
    assert torch.equal(heads["sst.out.weight"], model.heads["sst"].out.weight)


@pytest.mark.parametrize("inside", ["", "heads"])
def test_export_refuses_to_write_into_its_run(run, capsys, inside):
    config = (run / "config.json").read_bytes()
    assert cli.main(["export", str(run), str(run / inside)]) == 2
    err = capsys.readouterr().err
    assert "is the run folder" in err and "Traceback" not in err
    assert (run / "config.json").read_bytes() == config


def test_an_exported_folder_predicts_like_its_run(run, tmp_path):
    import numpy as np
    import minbert
    assert cli.main(["export", str(run), str(tmp_path / "out")]) == 0
    inputs = {"sst": ["the movie is good", "awful"],
              "sts": [("a dog runs .", "a cat runs .")]}
    for task, texts in inputs.items():
        ours = minbert.load(run, precision="fp32").predict(task, texts)
        exported = minbert.load(tmp_path / "out", precision="fp32").predict(task, texts)
        np.testing.assert_allclose(exported.values, ours.values, rtol=1e-6)


def test_onnx_graphs_predict_what_the_pytorch_model_does(run, tmp_path, capfd):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import numpy as np
    assert cli.main(["export", str(run), str(tmp_path / "out"), "--onnx"]) == 0
    out, err = capfd.readouterr()
    assert "onnx/sts.onnx" in out and "onnx/encoder.onnx" in out
    # one encoder graph holds the weights; the heads' graphs are small beside it
    graphs = {p.name: p.stat().st_size for p in (tmp_path / "out" / "onnx").iterdir()}
    assert sorted(graphs) == ["encoder.onnx", "quora.onnx", "sst.onnx", "sts.onnx"]
    assert sum(graphs.values()) < 1.5 * graphs["encoder.onnx"]
    import onnxruntime
    sessions = {name: onnxruntime.InferenceSession(str(tmp_path / "out" / "onnx" / name))
                for name in graphs}
    assert [i.name for i in sessions["encoder.onnx"].get_inputs()] == [
        "input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in sessions["sst.onnx"].get_outputs()] == ["probabilities", "logits"]
    assert [o.name for o in sessions["sts.onnx"].get_outputs()] == ["scores", "logits"]
    assert all(line.startswith("wrote ") for line in out.splitlines()), out  # no exporter noise
    assert "training mode" not in err and "torchvision" not in err, err
    torch_model = minbert.load(tmp_path / "out", precision="fp32")
    onnx_model = minbert.load(tmp_path / "out", backend="onnx")
    inputs = {"sst": ["the movie is good", "a great movie , not bad", "awful"],
              "quora": [("how do i learn python ?", "how do you learn python ?"),
                        ("what is a cat ?", "what is a dog ?")],
              "sts": [("a man plays guitar .", "a man plays the guitar ."),
                      ("a dog runs .", "the cat sits on a mat .")]}
    for task, texts in inputs.items():  # different batch sizes and lengths: dynamic axes
        ours, theirs = torch_model.predict(task, texts), onnx_model.predict(task, texts)
        if ours.probabilities is not None:
            np.testing.assert_allclose(theirs.probabilities, ours.probabilities, atol=1e-4)
        np.testing.assert_allclose(theirs.values, ours.values, atol=1e-4)
    # the graphs alone, as another program would run them: the encoder, then the head
    tokens = minbert.Tokenizer.from_pretrained(str(tmp_path / "out"))(["the movie is good",
                                                                      "awful"])
    feeds = {k: v.numpy() for k, v in tokens.items()}
    states, pooled = sessions["encoder.onnx"].run(None, feeds)
    head = sessions["sst.onnx"]
    given = {"hidden_states_0": states, "attention_mask_0": feeds["attention_mask"],
             "pooler_output_0": pooled}
    probabilities = head.run(["probabilities"], {i.name: given[i.name]
                                                 for i in head.get_inputs()})[0]
    np.testing.assert_allclose(probabilities, torch_model.predict(
        "sst", ["the movie is good", "awful"]).probabilities, atol=1e-4)


def test_an_export_carries_a_model_card_label_names_and_no_local_paths(run, tmp_path):
    import stat
    out = tmp_path / "export"
    assert cli.main(["export", str(run), str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "very negative, negative, neutral, positive, very positive" in card
    assert "not duplicate, duplicate" in card and "score = 0 + 5 * sigmoid(z)" in card
    assert "minbert.load" in card
    heads = json.loads((out / "heads.json").read_text())
    assert heads["task_outputs"]["sst"]["label_names"][4] == "very positive"
    assert heads["task_outputs"]["sts"]["range"] == [0.0, 5.0]
    for path in out.iterdir():
        if path.is_file() and path.suffix in (".json", ".md", ".txt"):
            assert str(tmp_path) not in path.read_text(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    max_length = heads["max_length"]
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == \
        max_length == 32
    prediction = minbert.load(out).predict("sst", "the movie is good")
    assert prediction.label_names[0] in heads["task_outputs"]["sst"]["label_names"]


def test_a_task_exported_alone_is_what_transformers_pipeline_predicts(
        tmp_path, tiny_checkpoint, capsys):
    """`export --task`: a BertForSequenceClassification folder; transformers' pipeline gives
    the run's class names and probabilities (and the score task its sigmoid)."""
    transformers = pytest.importorskip("transformers")
    data = write_task_files((tmp_path / "data").mkdir() or tmp_path / "data")
    values = tiny_config_values(data, tiny_checkpoint, tmp_path / "run", epochs=1)
    values["model"]["pooling"] = "pooler"
    train(checked_config(values))
    ours = minbert.load(tmp_path / "run", precision="fp32")
    inputs = {"sst": ["the movie is good", "an awful movie"],
              "quora": [("how do i cook rice ?", "how do you cook rice ?")],
              "sts": [("a dog runs .", "a cat runs .")]}
    for task, texts in inputs.items():
        out = tmp_path / f"hf-{task}"
        assert cli.main(["export", str(tmp_path / "run"), str(out), "--task", task]) == 0
        pipe = transformers.pipeline("text-classification", model=str(out), device="cpu")
        expected = ours.predict(task, texts)
        for i, text in enumerate(texts):
            given = {"text": text[0], "text_pair": text[1]} if isinstance(text, tuple) else text
            if expected.probabilities is not None:
                theirs = {r["label"]: r["score"] for r in pipe(given, top_k=None)}
                names = expected.class_names
                np_expected = {names[c]: p for c, p in enumerate(expected.probabilities[i])}
                assert theirs.keys() == np_expected.keys()
                for label, p in np_expected.items():
                    assert theirs[label] == pytest.approx(p, abs=1e-4)
            else:
                result = pipe(given, function_to_apply="sigmoid")
                unit = (result[0] if isinstance(result, list) else result)["score"]
                assert 5 * unit == pytest.approx(expected.scores[i], abs=5e-4)
    capsys.readouterr()
    mean_run = tmp_path / "mean"
    values = tiny_config_values(data, tiny_checkpoint, mean_run, epochs=1)
    train(checked_config(values))
    assert cli.main(["export", str(mean_run), str(tmp_path / "x"), "--task", "sst"]) == 2
    err = capsys.readouterr().err
    assert "cannot express" in err and 'tasks.sst.pooling = "pooler"' in err
    assert not (tmp_path / "x").exists()


def test_a_bi_encoded_task_exports_as_a_sentence_transformer(run, tmp_path, capsys):
    """`export --task sts` of a bi-encoded cosine head: a SentenceTransformer folder whose
    cosine, through the head's scale and shift (named in the model card), is the run's
    score."""
    st = pytest.importorskip("sentence_transformers")
    out = tmp_path / "st"
    assert cli.main(["export", str(run), str(out), "--task", "sts"]) == 0
    assert "SentenceTransformer folder" in capsys.readouterr().out
    pairs = [("a dog runs .", "a cat runs ."), ("a man plays guitar .", "the cat sits .")]
    ours = minbert.load(run, precision="fp32").predict("sts", pairs).scores
    model = st.SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 32
    a = model.encode([p[0] for p in pairs], convert_to_tensor=True)
    b = model.encode([p[1] for p in pairs], convert_to_tensor=True)
    cosine = model.similarity_pairwise(a, b)
    head = load_run(run).model.heads["sts"]
    scale, shift = float(head.scale.detach()), float(head.shift.detach())
    theirs = 5 * torch.sigmoid(scale * cosine + shift)
    assert theirs.tolist() == pytest.approx(list(ours), abs=1e-4)
    card = (out / "README.md").read_text()
    assert "SentenceTransformer(" in card and f"{scale:.6g}" in card
    # a head that pools more than the last layer cannot be said in its format
    saved = json.loads((run / "config.json").read_text())
    saved.update(run_dir=str(tmp_path / "wide"), train={**saved["train"], "epochs": 1})
    saved["tasks"]["sts"]["pool_layers"] = 2
    train(checked_config(saved))
    assert cli.main(["export", str(tmp_path / "wide"), str(tmp_path / "x"), "--task",
                     "sts"]) == 2
    assert "pools the last layer by its mean or [CLS]" in capsys.readouterr().err


def test_a_cross_encoded_pair_task_loads_as_a_cross_encoder(tmp_path, tiny_checkpoint):
    st = pytest.importorskip("sentence_transformers")
    data = write_task_files((tmp_path / "data").mkdir() or tmp_path / "data")
    values = tiny_config_values(data, tiny_checkpoint, tmp_path / "run", epochs=1)
    values["model"]["pooling"] = "pooler"
    values["data"]["tasks"] = ["quora", "sts"]
    train(checked_config(values))
    ours = minbert.load(tmp_path / "run", precision="fp32")
    pairs = [("how do i cook rice ?", "how do you cook rice ?"), ("what is a cat ?", "a dog")]
    for task in ("quora", "sts"):
        out = tmp_path / task
        assert cli.main(["export", str(tmp_path / "run"), str(out), "--task", task]) == 0
        model = st.CrossEncoder(str(out), device="cpu")
        expected = ours.predict(task, pairs)
        if task == "quora":  # two logits [0, z]: softmax is the run's probabilities
            theirs = model.predict(pairs, activation_fn=torch.nn.Softmax(dim=-1))
            np.testing.assert_allclose(theirs, expected.probabilities, atol=1e-4)
        else:  # one logit: the CrossEncoder's sigmoid is the score's share of its range
            theirs = model.predict(pairs, activation_fn=torch.nn.Sigmoid())
            assert (5 * theirs).tolist() == pytest.approx(list(expected.scores), abs=5e-4)
