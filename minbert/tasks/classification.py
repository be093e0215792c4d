"""Classification: softmax over N classes, or one logit (Bernoulli) when N = 2."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from minbert.tasks.base import KINDS, Task


MAX_CLASSES = 100_000  # a head of this many outputs is still a few hundred MB at bert-base


def _kl_categorical(p_logits, q_logits):
    """KL(p ‖ q) per example for categorical distributions given by logits."""
    p_log = F.log_softmax(p_logits, dim=-1)
    return (p_log.exp() * (p_log - F.log_softmax(q_logits, dim=-1))).sum(-1)


def _kl_bernoulli(p_logit, q_logit):
    """KL(p ‖ q) per example for Bernoulli distributions given by one logit each."""
    p_logit, q_logit = p_logit.squeeze(-1), q_logit.squeeze(-1)
    p = torch.sigmoid(p_logit)
    return (p * (F.logsigmoid(p_logit) - F.logsigmoid(q_logit))
            + (1 - p) * (F.logsigmoid(-p_logit) - F.logsigmoid(-q_logit)))


@KINDS.register
@dataclass
class ClassificationTask(Task):
    kind = "classification"
    num_classes: int = 2
    ordinal: bool = False  # ordered classes (SST's 0-4 sentiment): near misses are reported
    label_smoothing: float = 0.0    # this share of the target spread over the other classes
    # ordered classes only: the smoothing's share goes to the other classes by closeness,
    # in proportion to exp(-|k - gold|) (most SST errors are one class away)
    ordinal_smoothing: bool = False
    label_names: list = field(default_factory=list)  # a name per class, in class order
    metric_name = "accuracy"
    metric_abbreviation = "acc"

    @property
    def classes(self):
        return list(range(self.num_classes))

    @property
    def output_description(self):
        if self.binary:
            return "one logit z; P(class 1) = sigmoid(z), the class is 1 where z > 0"
        return f"{self.num_classes} logits; class probabilities = softmax(logits), the class " \
               "is the most probable"

    @property
    def class_names(self):
        return list(self.label_names) or [str(c) for c in self.classes]

    @property
    def analyses(self):
        return ("per_class",) + (("near_misses", "distribution") if self.ordinal else ())

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def num_outputs(self) -> int:
        return 1 if self.binary else self.num_classes

    def check(self) -> None:
        super().check()
        if (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                or not 2 <= self.num_classes <= MAX_CLASSES):
            raise ValueError(f"tasks.{self.name}.num_classes: an integer from 2 to "
                             f"{MAX_CLASSES:,}, got {self.num_classes!r}")
        for key in ("ordinal", "ordinal_smoothing"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"tasks.{self.name}.{key}: true or false, got "
                                 f"{getattr(self, key)!r}")
        smoothing = self.label_smoothing
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) \
                or not 0 <= smoothing < 1:
            raise ValueError(f"tasks.{self.name}.label_smoothing: a number in [0, 1), got "
                             f"{smoothing!r}")
        names = self.label_names
        if not isinstance(names, list) or names and (
                len(names) != self.num_classes
                or not all(isinstance(n, str) and n.strip() for n in names)
                or len(set(names)) != len(names)):
            raise ValueError(f"tasks.{self.name}.label_names: {self.num_classes} distinct "
                             f"names, one per class, got {names!r}")
        if self.ordinal_smoothing and not self.ordinal:
            raise ValueError(f"tasks.{self.name}.ordinal_smoothing needs ordered classes "
                             "(ordinal = true)")

    def parse_label(self, raw: str) -> float:
        value = float(raw)
        if not math.isfinite(value) or value != int(value) or not 0 <= value < self.num_classes:
            raise ValueError(f"label {raw!r} is not a class in 0..{self.num_classes - 1}")
        return value

    def loss(self, logits, labels):
        eps = self.label_smoothing
        if self.binary:
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1),
                                                      labels * (1 - eps) + eps / 2)
        if not eps:
            return F.cross_entropy(logits, labels.long())
        return F.cross_entropy(logits, self.soft_targets(labels.long()))

    def soft_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """(batch, classes): 1 − ε on the gold class, ε on the others, evenly (as
        F.cross_entropy's label_smoothing does, less the gold class's share) or by closeness
        (ordinal_smoothing)."""
        eps, k = self.label_smoothing, self.num_classes
        classes = torch.arange(k, device=labels.device)
        distance = (classes[None, :] - labels[:, None]).abs().float()
        weights = torch.exp(-distance) if self.ordinal_smoothing else torch.ones_like(distance)
        weights = weights.masked_fill(distance == 0, 0.0)
        weights = weights / weights.sum(-1, keepdim=True)
        return (1 - eps) * F.one_hot(labels, k).float() + eps * weights

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, num_classes) class probabilities (a binary task: [1 − p, p])."""
        if self.binary:
            p = torch.sigmoid(logits.squeeze(-1))
            return torch.stack([1 - p, p], dim=-1)
        return F.softmax(logits, dim=-1)

    def mean_logits(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Logits of the mean of several models' class probabilities (an ensemble's)."""
        if self.binary:
            p = torch.stack([torch.sigmoid(x) for x in logits]).mean(0).clamp(1e-6, 1 - 1e-6)
            return torch.log(p) - torch.log1p(-p)
        p = torch.stack([F.softmax(x, dim=-1) for x in logits]).mean(0)
        return torch.log(p.clamp_min(1e-12))

    def predict(self, logits):
        if self.binary:
            return (logits.squeeze(-1) > 0).long()
        return logits.argmax(-1)

    def metric(self, predictions, labels):
        return float(np.mean(np.asarray(predictions) == np.asarray(labels)))

    def resampled_metric(self, predictions, labels):
        return (predictions == labels).mean(1)

    def format_prediction(self, value) -> str:
        return str(int(value))

    def strata(self, labels):
        return np.asarray(labels).astype(int)

    def divergence(self, logits, target, kind):
        kl = _kl_bernoulli if self.binary else _kl_categorical
        if kind == "kl":  # KL(target ‖ perturbed): how much information the perturbation loses
            return kl(target, logits).mean()
        if kind == "sym-kl":
            return (kl(target, logits) + kl(logits, target)).mean()
        if kind == "squared":
            probs = torch.sigmoid if self.binary else (lambda x: F.softmax(x, dim=-1))
            return (probs(logits) - probs(target)).pow(2).sum(-1).mean()
        raise ValueError(f"unknown divergence {kind!r}; use 'kl', 'sym-kl' or 'squared'")
