"""Knowledge distillation from trained runs (Hinton et al. 2015), with per-task teachers and
teacher annealing (Clark et al. 2019, "BAM! Born-Again Multi-Task Networks"): the
student's outputs on each training batch are pulled towards what the teachers predict for
the same examples, so that one multi-task model keeps what specialists or an ensemble know.

    [regularizers.distill]
    teachers = ["runs/a/seed-0", "runs/a/seed-1"]     # one ensemble for every task, or
    teachers = {sst = ["runs/spec/specialist-sst"], sts = ["runs/spec/specialist-sts"]}
    weight = 1.0          # without annealing: added to each task's loss, weight · divergence
    divergence = "kl"     # KL(teachers ‖ student); or sym-kl, squared
    anneal = "linear"     # BAM: the target moves from the teachers to the gold labels

Without annealing the task's loss gains `weight · divergence(teachers, student)`. With
`anneal = "linear"` a task with teachers is trained on λ · gold loss + (1 − λ) · weight ·
divergence, λ rising linearly from 0 at the first update to 1 at the last (BAM's teacher
annealing: Eq. 2 of the paper mixes the targets, which for a cross-entropy is this mix of
the two losses); the term returned is what turns the trainer's gold loss into that mix.

The teachers' target for a batch is the mean of their predictions (class probabilities,
or scores), as `minbert evaluate RUN RUN ...` averages them, turned back into logits by the
task (`Task.mean_logits`). Teachers run in eval mode on the batch the student sees (so
they must share its tokenizer and each task's pair encoding), once per example: their
outputs are cached by the example's tokens, for this process, so later epochs, and the
later seeds of one `--seeds` command, cost nothing extra. (A teacher's output for an
example does not depend on the batch around it; on the CPU this was checked to hold to the
last bit, so a seed trained after another in one command gets the targets it would get
alone.)

A `--seeds` or specialists folder stands for the runs it holds when training starts; the
run's start record in log.jsonl lists them, and a resumed run keeps them, even if the
folder has gained seeds since.
"""
from __future__ import annotations

import warnings

import torch

from minbert.config import DIVERGENCES
from minbert.data import MinbertWarning
from minbert.regularizers import REGULARIZERS, Regularizer

ANNEALING = ("none", "linear")

# The teachers' mean outputs, by (task, teacher weights) and then by example tokens: shared
# by every student this process trains, so the seeds of one command score each example once.
_SHARED: dict[tuple, dict[bytes, torch.Tensor]] = {}


@REGULARIZERS.register
class Distill(Regularizer):
    name = "distill"

    def __init__(self, teachers: list | dict, weight: float = 1.0, divergence: str = "kl",
                 anneal: str = "none", tasks=None):
        self.tasks = tasks or {}
        self.folders = _teacher_folders(teachers, self.tasks)
        self.check_options(weight, divergence, anneal)
        self.weight, self.kind, self.anneal = float(weight), divergence, anneal
        self.teachers = None  # task -> loaded runs, on first use
        self.cache: dict[str, dict[bytes, torch.Tensor]] = {}  # task -> its _SHARED entry
        self.updates, self.total_updates = 0, 1

    @staticmethod
    def check_options(weight: float = 1.0, divergence: str = "kl", anneal: str = "none",
                      **unknown) -> None:
        """The options besides the teachers, checked (before the teachers exist)."""
        if unknown:
            raise ValueError(f"regularizers.distill: unknown option(s) {sorted(unknown)}; it "
                             "takes teachers, weight, divergence and anneal")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"regularizers.distill.weight: a number ≥ 0, got {weight!r}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"regularizers.distill.divergence = {divergence!r}; use one of "
                             f"{', '.join(DIVERGENCES)}")
        if anneal not in ANNEALING:
            raise ValueError(f"regularizers.distill.anneal = {anneal!r}; use one of "
                             f"{', '.join(ANNEALING)}")

    def start(self, total_updates: int) -> None:
        self.total_updates = max(1, total_updates)

    def after_step(self, model) -> None:
        self.updates += 1

    def gold_share(self) -> float:
        """λ: the gold labels' share of the target (1 without annealing)."""
        if self.anneal == "none":
            return 1.0
        return min(1.0, self.updates / max(1, self.total_updates - 1))

    def _load(self, model, device):
        from minbert.loading import load_run
        runs = {folder: load_run(folder) for folders in self.folders.values()
                for folder in folders}
        for run in runs.values():
            run.model.to(device).eval()
            if run.tokenizer.vocab_size != model.encoder.config.vocab_size:
                raise ValueError(f"regularizers.distill: teacher {run.folder.path} has another "
                                 "vocabulary; teachers and student must share the tokenizer")
        self.teachers = {}
        for name, folders in self.folders.items():
            for folder in folders:
                run = runs[folder]
                if name not in run.tasks:
                    raise ValueError(f"regularizers.distill: teacher {run.folder.path} has no "
                                     f"task {name!r} (it has {', '.join(run.tasks)})")
                if run.model.encodings[name] != model.encodings[name]:
                    raise ValueError(f"regularizers.distill: teacher {run.folder.path} encodes "
                                     f"{name} as {run.model.encodings[name]!r}, the student as "
                                     f"{model.encodings[name]!r}; teachers and student must "
                                     "share each task's pair encoding")
            self.teachers[name] = [runs[folder] for folder in folders]
            self.cache[name] = _SHARED.setdefault(
                (name, *(_weights_stamp(run.folder) for run in self.teachers[name])), {})

    @torch.no_grad()
    def targets(self, model, task, batch, device) -> torch.Tensor:
        """The task's teachers' mean prediction for the batch's examples, as logits
        (cached)."""
        if self.teachers is None:
            self._load(model, device)
        cache = self.cache[task.name]
        keys = _example_keys(batch)
        missing = [i for i, key in enumerate(keys) if key not in cache]
        if missing:
            rows = torch.as_tensor(missing)
            part = (batch.select(rows) if len(missing) < batch.size else batch).to(device)
            outputs = [run.model(part).float() for run in self.teachers[task.name]]
            mean = task.mean_logits(outputs).cpu()
            for position, row in enumerate(missing):
                cache[keys[row]] = mean[position]
        return torch.stack([cache[key] for key in keys]).to(device)

    def __call__(self, model, task, batch, logits):
        if not self.weight or task.name not in self.folders:
            return logits.new_zeros(())
        target = self.targets(model, task, batch, logits.device)
        term = self.weight * task.divergence(logits.float(), target, self.kind)
        if self.anneal == "none":
            return term
        gold = self.gold_share()  # the trainer adds the gold loss: this makes the BAM mix
        return (1 - gold) * (term - task.loss(logits.float(), batch.labels))

    def state_dict(self) -> dict:
        return {"updates": self.updates, "teachers": self.folders}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))
        started = state.get("teachers")
        if started and started != self.folders:  # a teachers' folder gained or lost seeds
            warnings.warn(MinbertWarning(
                "regularizers.distill: the run resumes with the teachers it started with "
                f"({_listed(started)}); its config's folders now hold {_listed(self.folders)}"))
            self.folders, self.teachers, self.cache = started, None, {}

    def describe(self) -> dict:
        return {"teachers": self.folders}


def _weights_stamp(folder) -> tuple:
    """A teacher's weights file, named by path, size and change time (a folder retrained in
    this process gets new entries)."""
    path = folder.best if folder.best.is_file() else folder.path / "heads.safetensors"
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _example_keys(batch) -> list[bytes]:
    """Each example of the batch as bytes: its tokens and token types in every segment,
    padding left out (the same example in any batch, seed or subsample gives the same key)."""
    rows = []
    for segment in batch.segments:
        ids, types, mask = (segment[k].cpu() for k in ("input_ids", "token_type_ids",
                                                        "attention_mask"))
        rows.append([torch.cat([m.sum().reshape(1), i[m.bool()], t[m.bool()]]).numpy()
                     .tobytes() for i, t, m in zip(ids, types, mask)])
    return [b"".join(parts) for parts in zip(*rows)]  # each segment led by its length


def _listed(folders: dict[str, list[str]]) -> str:
    return "; ".join(f"{name}: {len(runs)} run(s)" for name, runs in folders.items())


def _teacher_folders(teachers, tasks: dict) -> dict[str, list[str]]:
    """{task: [run folders]} from a list (every task of the student) or a table by task;
    each folder checked to hold a finished run, before any training."""
    from minbert.loading import check_run_folder
    from minbert.runs import RunError, expand_seeds
    where = "regularizers.distill.teachers"
    if isinstance(teachers, list):
        teachers = {name: teachers for name in tasks}
    if not isinstance(teachers, dict) or not teachers:
        raise ValueError(f"{where}: a list of run folders, or a table of them by task "
                         f"({{sst = [\"runs/a\"]}}), got {teachers!r}")
    out = {}
    for name, folders in teachers.items():
        if tasks and name not in tasks:
            raise ValueError(f"{where}.{name}: the student has no task {name!r} (it has "
                             f"{', '.join(tasks)})")
        if not isinstance(folders, list) or not folders \
                or not all(isinstance(f, str) and f for f in folders):
            raise ValueError(f"{where}.{name}: a list of run folders, got {folders!r}")
        out[name] = expand_seeds(folders)  # a --seeds folder: the ensemble of its seeds
        for folder in out[name]:
            try:
                check_run_folder(folder)
            except RunError as e:
                raise ValueError(f"{where}: {e}") from None
    return out
