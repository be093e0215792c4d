"""BERT (Devlin et al. 2019) from scratch, with the parameter names of a Hugging Face checkpoint.

Read top to bottom: config, embeddings, attention, feed-forward, layer, model, loading.
Parameter names and shapes equal HF `BertModel`'s, so a checkpoint's state dict loads
after only the renames old checkpoints need (`gamma`/`beta`, a `bert.` prefix).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minbert.pretrained import CheckpointError, load_state_dict, resolve_checkpoint


class ConfigError(ValueError):
    """A config.json (or a config value) that this BERT cannot honour."""


ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported; "
                              f"use one of {sorted(ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "BertConfig":
        model_type = values.get("model_type", "bert")
        if model_type != "bert":
            raise ConfigError(f"{source}: model_type {model_type!r} is not a BERT; "
                              "minbert loads model_type 'bert' only")
        position_type = values.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ConfigError(f"{source}: position_embedding_type {position_type!r} is not "
                              "supported; only 'absolute' is")
        if values.get("is_decoder") or values.get("add_cross_attention"):
            raise ConfigError(f"{source}: decoder BERTs are not supported")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in values.items() if k in known and v is not None})
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict:
        return {"model_type": "bert", "architectures": ["BertModel"],
                "position_embedding_type": "absolute",
                **{f.name: getattr(self, f.name) for f in fields(self)}}


# Dropout masks from cheap random words on CPUs (`dropout` below); False: torch's own
# everywhere (benchmarks/model_speed.py times both)
CHEAP_CPU_DROPOUT = True


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout; on a CPU its mask is drawn from 64-bit random words, four 15-bit lanes
    each, so the keep probability is 1 − p to within 2^-15 and the random-number cost is a
    quarter of torch's one draw per element (a training step 1.48x faster in bf16, 1.18x
    in fp32 on 2 cores: benchmarks/model_speed.py). The draws come from torch's generator,
    so seeds and resumed runs replay the same masks. Elsewhere torch's own (fused on
    GPUs)."""
    if not training or p == 0.0 or x.device.type != "cpu" or not CHEAP_CPU_DROPOUT:
        return F.dropout(x, p, training)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each
    lanes = words.view(torch.int16)[:n].view(x.shape) & 0x7FFF  # the top lane has 15
    return x * ((lanes >= round(p * 32768)).to(x.dtype) * (1.0 / (1.0 - p)))


class Dropout(nn.Dropout):
    """nn.Dropout with the CPU mask of `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, word_embeds: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """Adds position and segment embeddings to the (possibly perturbed) word embeddings."""
        seq_len = word_embeds.shape[1]
        positions = self.position_embeddings.weight[:seq_len]
        x = word_embeds + positions + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape

        def heads(t):  # (batch, seq, hidden) -> (batch, heads, seq, head_dim)
            return t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

        if torch.is_grad_enabled():
            q, k, v = self.query(x), self.key(x), self.value(x)
        else:  # inference: one matmul for q, k and v, (batch, seq, 3 * hidden); faster on CPU
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            q, k, v = F.linear(x, weight, bias).split(hidden, dim=-1)
        q, k, v = heads(q), heads(k), heads(v)
        if self.training and self.dropout_p > 0 and x.device.type == "cpu" \
                and CHEAP_CPU_DROPOUT:
            # SDPA's CPU kernels drop attention with one random draw per weight: the same
            # maths spelt out, with the cheaper mask
            scores = q @ k.transpose(-1, -2) * self.head_dim ** -0.5
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = dropout(weights, self.dropout_p, True).to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(batch, seq, hidden)


class ResidualOutput(nn.Module):
    """Projection, dropout and the post-LayerNorm residual (HF names: dense, LayerNorm)."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = ResidualOutput(config, config.hidden_size)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = ResidualOutput(config, config.intermediate_size)

    def forward(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, mask, output_hidden_states: bool = False, top=None):
        """`top` (layers of the same shape, e.g. a task's own copy) replaces as many of the
        top layers."""
        layers = [*self.layer[:len(self.layer) - len(top)], *top] if top else self.layer
        states = [x]
        for layer in layers:
            x = layer(x, mask)
            states.append(x)
        return tuple(states) if output_hidden_states else x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """The BERT encoder: `model(input_ids, attention_mask, token_type_ids)` returns
    `(last_hidden_state (batch, seq, hidden), pooled_output (batch, hidden))`; with
    `output_hidden_states=True` also every layer's output, the embeddings' first (as HF);
    `top` (a list of layers) runs in place of as many of the encoder's top layers."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The per-token input embeddings, the point where SMART adds its perturbation."""
        return self.embeddings.word_embeddings(input_ids)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, *,
                inputs_embeds=None, output_hidden_states: bool = False, top=None):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        word_embeds = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        batch, seq = word_embeds.shape[:2]
        if seq > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seq} exceeds max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, seq, dtype=torch.long, device=word_embeds.device)
        mask = None
        if attention_mask is not None:
            # additive float mask, (batch, 1, 1, seq): built once, not converted per layer
            mask = torch.zeros(batch, 1, 1, seq, dtype=word_embeds.dtype, device=word_embeds.device)
            mask.masked_fill_(~attention_mask.bool()[:, None, None, :], float("-inf"))
        states = self.encoder(self.embeddings(word_embeds, token_type_ids), mask,
                              output_hidden_states=True, top=top)
        hidden = states[-1]
        if output_hidden_states:
            return hidden, self.pooler(hidden), states
        return hidden, self.pooler(hidden)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, strict: bool = False,
                        verbose: bool = True) -> "BertModel":
        """Loads a BERT from a local HF folder, the offline name `minilm-l6`, or a hub id."""
        folder = resolve_checkpoint(name_or_path)
        config = BertConfig.from_json(folder / "config.json")
        model = cls(config)
        state, source = load_state_dict(folder)
        report = model.load_hf_state_dict(state, source)
        if len(report["missing"]) == len(model.state_dict()):
            raise CheckpointError(f"{source}: none of its {len(state)} tensors is a BERT "
                                  f"weight this model knows (e.g. {sorted(state)[:3]}); it "
                                  "would train a randomly initialised BERT")
        if strict and (report["missing"] or report["unexpected"]):
            raise KeyError(f"{source}: missing keys {report['missing']}, "
                           f"unexpected keys {report['unexpected']}")
        if verbose and (report["missing"] or report["unexpected"]):
            import warnings
            warnings.warn(f"{source}: missing keys {report['missing'] or 'none'}; "
                          f"unexpected keys {report['unexpected'] or 'none'}", stacklevel=2)
        model.source = str(folder)
        return model.eval()

    def load_hf_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> dict:
        """Copies HF-named tensors in; refuses wrong shapes; returns missing/unexpected keys."""
        own = self.state_dict()
        renamed = {}
        for key, tensor in state.items():
            key = key.removeprefix("bert.")
            if key.endswith(".gamma"):
                key = key[:-len("gamma")] + "weight"
            elif key.endswith(".beta"):
                key = key[:-len("beta")] + "bias"
            if key == "embeddings.position_ids":  # a buffer in HF, derived here
                continue
            renamed[key] = tensor
        for key, tensor in renamed.items():
            if key in own and own[key].shape != tensor.shape:
                raise ValueError(f"{source}: tensor {key} has shape {tuple(tensor.shape)}, "
                                 f"the config needs {tuple(own[key].shape)}")
        missing = sorted(set(own) - set(renamed))
        # cls.*: pretraining heads (MLM, next sentence) that a checkpoint may carry beside
        # the encoder; not the encoder's, and expected
        unexpected = sorted(k for k in set(renamed) - set(own) if not k.startswith("cls."))
        self.load_state_dict({k: v for k, v in renamed.items() if k in own}, strict=False)
        return {"missing": missing, "unexpected": unexpected}
