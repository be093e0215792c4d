"""Regression onto a bounded range: the model emits a logit, a sigmoid maps it into the range."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from minbert.tasks.base import KINDS, Task


@KINDS.register
@dataclass
class RegressionTask(Task):
    kind = "regression"
    low: float = 0.0
    high: float = 5.0
    metric_name = "pearson"
    metric_abbreviation = "corr"
    analyses = ("bands", "distribution", "scatter")
    smart_divergence = "squared"
    cosine_pair_head = True

    def check(self) -> None:
        super().check()
        for key in ("low", "high"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"tasks.{self.name}.{key}: a number, got {value!r}")
        if not self.low < self.high:
            raise ValueError(f"tasks.{self.name}: low ({self.low}) must be below high "
                             f"({self.high})")

    @property
    def num_outputs(self) -> int:
        return 1

    def parse_label(self, raw: str) -> float:
        value = float(raw)
        if not self.low <= value <= self.high:
            raise ValueError(f"score {raw!r} is outside [{self.low}, {self.high}]")
        return value

    def unit(self, logits: torch.Tensor) -> torch.Tensor:
        """Prediction on the unit interval, (batch,)."""
        return torch.sigmoid(logits.squeeze(-1))

    def loss(self, logits, labels):
        """Binary cross-entropy against the score scaled to [0, 1] (the sentence-transformers
        CrossEncoder loss for STS-B): unlike MSE through a sigmoid, its gradient does not
        vanish when the prediction saturates."""
        target = (labels - self.low) / (self.high - self.low)
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), target)

    def predict(self, logits):
        return self.low + (self.high - self.low) * self.unit(logits)

    def mean_logits(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Logits of the mean of several models' scores (an ensemble's)."""
        p = torch.stack([self.unit(x) for x in logits]).mean(0).clamp(1e-6, 1 - 1e-6)
        return (torch.log(p) - torch.log1p(-p)).unsqueeze(-1)

    def metric(self, predictions, labels):
        predictions = np.asarray(predictions, dtype=np.float64)
        if np.ptp(predictions) == 0:
            return 0.0  # a constant prediction has no correlation
        return float(np.corrcoef(predictions, np.asarray(labels, dtype=np.float64))[0, 1])

    def resampled_metric(self, predictions, labels):
        """Pearson's r of each row (0 where a row is constant, as `metric` says)."""
        xc = predictions - predictions.mean(1, keepdims=True)
        yc = labels - labels.mean(1, keepdims=True)
        denominator = np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
        return np.divide((xc * yc).sum(1), denominator, out=np.zeros(len(predictions)),
                         where=denominator > 0)

    @property
    def output_description(self):
        return (f"one logit z; score = {self.low:g} + {self.high - self.low:g} * sigmoid(z), on "
                f"[{self.low:g}, {self.high:g}]")

    @property
    def value_range(self):
        return (self.low, self.high)

    def divergence(self, logits, target, kind):
        """'squared' is the regression divergence; the KL forms treat the unit-interval
        prediction as a Bernoulli mean, so a run may ask for KL on every task (SMART 1)."""
        p, q = self.unit(logits), self.unit(target)
        if kind == "squared":
            return (p - q).pow(2).mean()
        eps = 1e-6
        p, q = p.clamp(eps, 1 - eps), q.clamp(eps, 1 - eps)

        def kl(a, b):
            return a * (a / b).log() + (1 - a) * ((1 - a) / (1 - b)).log()

        if kind == "kl":
            return kl(q, p).mean()
        if kind == "sym-kl":
            return (kl(q, p) + kl(p, q)).mean()
        raise ValueError(f"unknown divergence {kind!r}; use 'kl', 'sym-kl' or 'squared'")

    def strata(self, labels):
        """Five equal bands of the score range (fixed edges: the same on every file)."""
        edges = np.linspace(self.low, self.high, 6)[1:-1]
        return np.digitize(np.asarray(labels, dtype=np.float64), edges)

    def overall_share(self, value: float) -> float:
        """A correlation r counts as (r + 1) / 2, on the scale of an accuracy."""
        return (value + 1) / 2

    def format_prediction(self, value) -> str:
        return f"{float(value):.4f}"
