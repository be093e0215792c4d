"""Knowledge distillation from trained runs (Hinton et al. 2015): the student's outputs on
each training batch are pulled towards what the teachers, one run or an ensemble of them,
predict for the same examples, so that one model keeps part of an ensemble's gain.

    [regularizers.distill]
    teachers = ["runs/fast-seeds/seed-0", "runs/fast-seeds/seed-1", "runs/fast-seeds/seed-2"]
    weight = 1.0          # added to each task's loss: weight · divergence(student, teachers)
    divergence = "kl"     # KL(teachers ‖ student); or sym-kl, squared

The teachers' target for a batch is the mean of their predictions (class probabilities,
or scores), as `minbert evaluate RUN RUN ...` averages them, turned back into logits by the
task (`Task.mean_logits`); the term is the task's own divergence between the student's
logits and those. Teachers run in eval mode on the batch the student sees (so they must
share its tokenizer and each task's pair encoding), once per example: their outputs are
cached by example, and later epochs cost nothing extra.
"""
from __future__ import annotations

import torch

from minbert.config import DIVERGENCES
from minbert.regularizers import REGULARIZERS, Regularizer


@REGULARIZERS.register
class Distill(Regularizer):
    name = "distill"

    def __init__(self, teachers: list, weight: float = 1.0, divergence: str = "kl",
                 tasks=None):
        from minbert.loading import check_run_folder
        from minbert.runs import RunError
        if not isinstance(teachers, list) or not teachers \
                or not all(isinstance(t, str) and t for t in teachers):
            raise ValueError(f"regularizers.distill.teachers: a list of run folders, got "
                             f"{teachers!r}")
        for folder in teachers:  # checked when the config loads, before any training
            try:
                check_run_folder(folder)
            except RunError as e:
                raise ValueError(f"regularizers.distill.teachers: {e}") from None
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"regularizers.distill.weight: a number ≥ 0, got {weight!r}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"regularizers.distill.divergence = {divergence!r}; use one of "
                             f"{', '.join(DIVERGENCES)}")
        self.folders, self.weight, self.kind = teachers, float(weight), divergence
        self.tasks = tasks or {}
        self.teachers = None  # loaded on first use
        self.cache: dict[str, dict[int, torch.Tensor]] = {}

    def _load(self, model, device):
        from minbert.loading import load_run
        self.teachers = [load_run(folder) for folder in self.folders]
        for run in self.teachers:
            run.model.to(device).eval()
        for run in self.teachers:
            for name in self.tasks:
                if name not in run.tasks:
                    raise ValueError(f"regularizers.distill: teacher {run.folder.path} has no "
                                     f"task {name!r} (it has {', '.join(run.tasks)})")
                if run.model.encodings[name] != model.encodings[name]:
                    raise ValueError(f"regularizers.distill: teacher {run.folder.path} encodes "
                                     f"{name} as {run.model.encodings[name]!r}, the student as "
                                     f"{model.encodings[name]!r}; teachers and student must "
                                     "share each task's pair encoding")
            if run.tokenizer.vocab_size != model.encoder.config.vocab_size:
                raise ValueError(f"regularizers.distill: teacher {run.folder.path} has another "
                                 "vocabulary; teachers and student must share the tokenizer")

    @torch.no_grad()
    def targets(self, model, task, batch, device) -> torch.Tensor:
        """The teachers' mean prediction for the batch's examples, as logits (cached)."""
        if self.teachers is None:
            self._load(model, device)
        cache = self.cache.setdefault(task.name, {})
        missing = [i for i, index in enumerate(batch.indices) if int(index) not in cache]
        if missing:
            rows = torch.as_tensor(missing)
            part = (batch.select(rows) if len(missing) < batch.size else batch).to(device)
            outputs = [run.model(part).float() for run in self.teachers]
            mean = task.mean_logits(outputs).cpu()
            for position, row in enumerate(missing):
                cache[int(batch.indices[row])] = mean[position]
        return torch.stack([cache[int(i)] for i in batch.indices]).to(device)

    def __call__(self, model, task, batch, logits):
        if not self.weight:
            return logits.new_zeros(())
        target = self.targets(model, task, batch, logits.device)
        return self.weight * task.divergence(logits.float(), target, self.kind)
