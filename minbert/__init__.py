"""minbert: a readable BERT and a multi-task fine-tuning toolkit built on it."""
from minbert.pretrained import OFFLINE_DEFAULT, CheckpointError
from minbert.model import BertConfig, BertModel, ConfigError
from minbert.tokenizer import Tokenizer


def load(runs, device: str | None = None, precision: str | None = None,
         backend: str = "torch"):
    """A predictor for one trained run folder or export, or an ensemble of several (a
    list): `minbert.load("runs/best-cpu").predict("sst", ["a great film"])`; an export
    with ONNX graphs also runs with `backend="onnx"`."""
    from minbert.predictor import load as load_predictor
    return load_predictor(runs, device, precision, backend)


__all__ = ["BertConfig", "BertModel", "CheckpointError", "ConfigError", "OFFLINE_DEFAULT",
           "Tokenizer", "load"]
__version__ = "0.1.0"
