"""One shared BERT encoder and a small head per task.

Pairs are cross-encoded (one pass over `[CLS] a [SEP] b [SEP]`), bi-encoded (each
sentence alone, then combined as [u; v; |u−v|; u⊙v], or by cosine for a regression task),
or both (the two heads' logits summed). A task with `own_layers = N` reads its own copy
of the top N encoder layers (`task_layers`), the layers below shared.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from minbert.config import PAIR_ENCODINGS, POOLINGS, SIMILARITY_HEADS
from minbert.data import Batch
from minbert.model import BertModel, Dropout
from minbert.tasks import Task

OWN_LAYERS = "task_layers."  # the tasks' own top layers' keys in a state dict (and an export)


class LinearHead(nn.Module):
    """For a single sentence or a cross-encoded pair: dropout, then one linear layer."""

    def __init__(self, hidden: int, outputs: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.out = nn.Linear(hidden, outputs)

    def forward(self, rep):
        return self.out(self.dropout(rep))


class ConcatPairHead(nn.Module):
    """Bi-encoded pair: [u; v; |u−v|; u⊙v] (Conneau et al. 2017), then a linear layer."""

    def __init__(self, hidden: int, outputs: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.out = nn.Linear(4 * hidden, outputs)

    def forward(self, u, v):
        return self.out(self.dropout(torch.cat([u, v, (u - v).abs(), u * v], dim=-1)))


class CosinePairHead(nn.Module):
    """Bi-encoded pair scored by cosine similarity, scaled into a logit (learned affine).
    With `projection` (the sentence vectors' width), each vector first goes through the
    task's own linear map, the identity at the start: the cosine is taken in a space the
    task can reshape without moving the encoder that other tasks share."""

    def __init__(self, projection: int = 0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.shift = nn.Parameter(torch.tensor(-2.5))
        self.projection = None
        if projection:
            self.projection = nn.Linear(projection, projection)
            with torch.no_grad():
                self.projection.weight.copy_(torch.eye(projection))
                self.projection.bias.zero_()

    def forward(self, u, v):
        if self.projection is not None:
            u, v = self.projection(u), self.projection(v)
        return (self.scale * F.cosine_similarity(u, v, dim=-1) + self.shift).unsqueeze(-1)


class BothPairHead(nn.Module):
    """A pair encoded both ways: the cross-encoder's logit plus the bi-encoder's (a sum of
    two heads, each with its own scale, so training learns how much each counts)."""

    def __init__(self, cross: nn.Module, bi: nn.Module):
        super().__init__()
        self.cross, self.bi = cross, bi

    def forward(self, joint, u, v):
        return self.cross(joint) + self.bi(u, v)


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: BertModel, tasks: dict[str, Task], pair_encoding: str = "cross",
                 pooling: str = "mean", head_dropout: float = 0.1,
                 similarity_head: str = "cosine"):
        super().__init__()
        for option, value, allowed in (("model.pair_encoding", pair_encoding, PAIR_ENCODINGS),
                                       ("model.pooling", pooling, POOLINGS),
                                       ("model.similarity_head", similarity_head,
                                        SIMILARITY_HEADS)):
            if value not in allowed:
                raise ValueError(f"{option}: {value!r} is not one of {allowed}")
        self.encoder = encoder
        self.encodings = {name: task.encoding(pair_encoding)  # data.ENCODINGS
                          for name, task in tasks.items()}
        self.poolings = {}  # task: (pooling, how many top layers are pooled and concatenated)
        for name, task in tasks.items():
            kind, layers = task.pooling or pooling, task.pool_layers
            if layers > encoder.config.num_hidden_layers:
                raise ValueError(f"tasks.{name}.pool_layers: {layers}, but the encoder has "
                                 f"{encoder.config.num_hidden_layers} layers")
            if kind == "pooler" and layers != 1:
                raise ValueError(f"tasks.{name}.pool_layers: the pooler (model.pooling) reads "
                                 f"the last layer only; set tasks.{name}.pooling to mean or cls")
            self.poolings[name] = (kind, layers)
        # each task's own copy of the top encoder layers (tasks.NAME.own_layers), from the
        # weights the encoder has now (the pretrained ones, when the model is built)
        self.task_layers = nn.ModuleDict()
        for name, task in tasks.items():
            if task.own_layers > encoder.config.num_hidden_layers:
                raise ValueError(f"tasks.{name}.own_layers: {task.own_layers}, but the "
                                 f"encoder has {encoder.config.num_hidden_layers} layers")
            if task.own_layers:
                self.task_layers[name] = copy.deepcopy(encoder.encoder.layer[-task.own_layers:])
        heads = {}
        for name, task in tasks.items():
            encoding = self.encodings[name]
            if task.projection and not (encoding in ("bi", "both") and task.cosine_pair_head
                                        and similarity_head == "cosine"):
                raise ValueError(f"tasks.{name}.projection: only a pair scored by cosine "
                                 f"has one; {name} is {encoding}-encoded"
                                 + ("" if encoding not in ("bi", "both") else
                                    f" with the {similarity_head} head"))
            width = encoder.config.hidden_size * self.poolings[name][1]
            if encoding in ("single", "cross", "both"):
                heads[name] = LinearHead(width, task.num_outputs, head_dropout)
            if encoding in ("bi", "both"):
                if task.cosine_pair_head and similarity_head == "cosine":
                    pair = CosinePairHead(width if task.projection else 0)
                else:
                    pair = ConcatPairHead(width, task.num_outputs, head_dropout)
                heads[name] = pair if encoding == "bi" else BothPairHead(heads[name], pair)
        self.heads = nn.ModuleDict(heads)

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        """Word embeddings of each segment, (batch, seq, hidden): what SMART perturbs."""
        return [self.encoder.word_embeddings(s["input_ids"]) for s in batch.segments]

    def represent(self, segment: dict[str, torch.Tensor], word_embeds: torch.Tensor,
                  task: str) -> torch.Tensor:
        """One segment as one vector per example, pooled as `task` asks: (batch, width)."""
        _, pooled, states = self.encoder(inputs_embeds=word_embeds,
                                         attention_mask=segment["attention_mask"],
                                         token_type_ids=segment["token_type_ids"],
                                         output_hidden_states=True,
                                         top=self.task_layers[task] if task in self.task_layers
                                         else None)
        return self.pool(task, states, pooled, segment["attention_mask"])

    def pool(self, task: str, states, pooled: torch.Tensor, attention_mask: torch.Tensor
             ) -> torch.Tensor:
        """The vector `task` reads from one segment's encoder outputs: its layers' states
        (the last ones at least as many as it pools) and BERT's pooler output."""
        kind, layers = self.poolings[task]
        if kind == "pooler":
            return pooled
        top = states[-layers:]
        if kind == "cls":
            return torch.cat([hidden[:, 0] for hidden in top], dim=-1)
        mask = attention_mask.unsqueeze(-1).to(top[0].dtype)  # (batch, seq, 1)
        count = mask.sum(1).clamp(min=1.0)
        return torch.cat([(hidden * mask).sum(1) / count for hidden in top], dim=-1)

    def forward(self, batch: Batch, word_embeds: list[torch.Tensor] | None = None):
        """Logits of `batch.task`, (batch, num_outputs); `word_embeds` replaces the lookup."""
        if word_embeds is None:
            word_embeds = self.embed(batch)
        reps = [self.represent(s, e, batch.task) for s, e in zip(batch.segments, word_embeds)]
        return self.heads[batch.task](*reps)

    def encoder_state(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """The encoder's weights as `task` reads them, its own top layers (tasks.NAME.
        own_layers) in place of the shared ones: a standard BERT's state either way."""
        state = self.encoder.state_dict()
        own = self.task_layers[task] if task in self.task_layers else []
        first = self.encoder.config.num_hidden_layers - len(own)
        for i, layer in enumerate(own):
            state.update({f"encoder.layer.{first + i}.{key}": value
                          for key, value in layer.state_dict().items()})
        return state

    def load_task_layers(self, task: str, encoder_state: dict[str, torch.Tensor]) -> None:
        """`task`'s own top layers from a BERT state (encoder.layer.N.… keys)."""
        own = self.task_layers[task]
        first = self.encoder.config.num_hidden_layers - len(own)
        for i, layer in enumerate(own):
            prefix = f"encoder.layer.{first + i}."
            layer.load_state_dict({k.removeprefix(prefix): v for k, v in encoder_state.items()
                                   if k.startswith(prefix)})

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def own_parameters(self, task: str) -> list[nn.Parameter]:
        """What `task` alone reads: its own top layers and its head."""
        own = [self.heads[task]] + ([self.task_layers[task]] if task in self.task_layers
                                    else [])
        return [p for module in own for p in module.parameters()]

    def frozen_for(self, finished: list[str]) -> list[nn.Parameter]:
        """What stays as it is once the `finished` tasks are past their epochs: what they
        read (the shared encoder, their own layers and heads)."""
        if not finished:
            return []
        return [*self.encoder.parameters(), *(p for t in finished for p in self.own_parameters(t))]
