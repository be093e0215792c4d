"""minbert: a readable BERT and a multi-task fine-tuning toolkit built on it."""
from minbert.pretrained import OFFLINE_DEFAULT, CheckpointError
from minbert.model import BertConfig, BertModel, ConfigError
from minbert.tokenizer import Tokenizer

__all__ = ["BertConfig", "BertModel", "CheckpointError", "ConfigError", "OFFLINE_DEFAULT",
           "Tokenizer"]
__version__ = "0.1.0"
