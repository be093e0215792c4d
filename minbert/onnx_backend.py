"""ONNX: a trained model as one encoder graph shared by the tasks' small head graphs, run
by onnxruntime.

`minbert export RUN OUT --onnx` writes OUT/onnx/ beside the HF folder:
- encoder.onnx: the BERT encoder, its inputs named as transformers names them
  (input_ids, attention_mask, token_type_ids; each (batch, length), both dynamic), its
  outputs `hidden_states` (the top K layers' states stacked, (K, batch, length, hidden),
  K the most any task pools) and `pooler_output` (batch, hidden); it holds the weights,
  once for every task;
- TASK.onnx: the task's pooling and head. It takes each segment's encoder outputs and
  mask (one segment: a sentence or a cross-encoded pair; two: a bi-encoded pair; three: a
  pair encoded both ways) as hidden_states_N, attention_mask_N, pooler_output_N (the
  inputs its pooling reads) and returns `probabilities` (batch, classes) for a
  classification task or `scores` (batch,) in the task's range, and `logits`.
`minbert.load(OUT, backend="onnx")` predicts with them. Needs `pip install
'minbert[onnx]'` (onnx and onnxscript to export, onnxruntime to run).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from minbert.config import ENCODINGS
from minbert.data import Batch

SEGMENT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
HEAD_INPUTS = ("hidden_states", "attention_mask", "pooler_output")
ENCODER = "encoder.onnx"


class OnnxExportError(RuntimeError):
    """An export or a graph that cannot be used; the message says what to install or do."""


class _Encoder(nn.Module):
    """The encoder with transformers' input names; its top `layers` states, stacked."""

    def __init__(self, encoder, layers: int):
        super().__init__()
        self.encoder, self.layers = encoder, layers

    def forward(self, input_ids, attention_mask, token_type_ids):
        _, pooled, states = self.encoder(input_ids, attention_mask, token_type_ids,
                                         output_hidden_states=True)
        return torch.stack(states[-self.layers:]), pooled


class _OneSegment(nn.Module):
    """One task's pooling and head over its segments' encoder outputs (flat named
    tensors: the graph's inputs); returns its outputs as users read them, and logits."""

    def __init__(self, model, task):
        super().__init__()
        self.model, self.task = model, task

    def _run(self, *tensors):
        reps = [self.model.pool(self.task.name, list(states.unbind(0)), pooled, mask)
                for states, mask, pooled in (tensors[i:i + 3] for i in range(0, len(tensors), 3))]
        logits = self.model.heads[self.task.name](*reps)
        shown = self.task.probabilities(logits) if self.task.classes is not None \
            else self.task.predict(logits)
        return shown, logits

    def forward(self, hidden_states_0, attention_mask_0, pooler_output_0):
        return self._run(hidden_states_0, attention_mask_0, pooler_output_0)


class _TwoSegments(_OneSegment):
    def forward(self, hidden_states_0, attention_mask_0, pooler_output_0,  # noqa: D102
                hidden_states_1, attention_mask_1, pooler_output_1):
        return self._run(hidden_states_0, attention_mask_0, pooler_output_0,
                         hidden_states_1, attention_mask_1, pooler_output_1)


class _ThreeSegments(_OneSegment):
    def forward(self, hidden_states_0, attention_mask_0, pooler_output_0,  # noqa: D102
                hidden_states_1, attention_mask_1, pooler_output_1,
                hidden_states_2, attention_mask_2, pooler_output_2):
        return self._run(hidden_states_0, attention_mask_0, pooler_output_0,
                         hidden_states_1, attention_mask_1, pooler_output_1,
                         hidden_states_2, attention_mask_2, pooler_output_2)


_WRAPPERS = {1: _OneSegment, 2: _TwoSegments, 3: _ThreeSegments}  # by segment count


def segments_of(model, task) -> int:
    return ENCODINGS[model.encodings[task.name]]


def export_onnx(model, tasks: dict, out: str | Path) -> list[Path]:
    """OUT/onnx/encoder.onnx and one head graph per task, dynamic in batch and length."""
    try:
        import onnx  # noqa: F401  (the exporter needs it, and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise OnnxExportError("exporting to ONNX needs onnx and onnxscript: "
                              "pip install 'minbert[onnx]'") from None
    if model.task_layers:
        name = next(iter(model.task_layers))
        raise OnnxExportError(f"--onnx: the ONNX export writes one encoder graph that every "
                              f"task shares, but {name} reads its own top layers "
                              f"(tasks.{name}.own_layers); export without --onnx, or that "
                              f"task alone with --task {name}")
    from torch.export import Dim
    folder = Path(out) / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    config = model.encoder.config
    layers = max(model.poolings[name][1] for name in tasks)
    batch, length = Dim("batch", min=1, max=65536), Dim("length", min=2,
                                                        max=config.max_position_embeddings)
    ids = torch.full((2, 6), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    encoder = _Encoder(model.encoder, layers).eval()
    written = [_export(encoder, (ids, mask, torch.zeros_like(ids)), folder / ENCODER,
                       {key: {0: batch, 1: length} for key in SEGMENT_INPUTS},
                       ["hidden_states", "pooler_output"])]
    with torch.no_grad():
        states, pooled = encoder(ids, mask, torch.zeros_like(ids))
    for name, task in tasks.items():
        count = segments_of(model, task)
        example, shapes = [], {}
        for segment in range(count):
            length = Dim(f"length_{segment}", min=2, max=config.max_position_embeddings)
            example += [states.clone(), mask.clone(), pooled.clone()]  # distinct inputs
            shapes.update({f"hidden_states_{segment}": {1: batch, 2: length},
                           f"attention_mask_{segment}": {0: batch, 1: length},
                           f"pooler_output_{segment}": {0: batch}})
        shown = "probabilities" if task.classes is not None else "scores"
        written.append(_export(_WRAPPERS[count](model, task).eval(), tuple(example),
                               folder / f"{name}.onnx", shapes, [shown, "logits"]))
    return written


def _export(module, example: tuple, path: Path, shapes: dict, outputs: list[str]) -> Path:
    """One graph; the exporter's progress lines and warnings are its own business: kept,
    and shown only if it fails."""
    noise = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(noise), \
            contextlib.redirect_stderr(noise), _quiet("torch.onnx", "torch.export"):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, example, str(path), dynamo=True,
                              input_names=list(shapes), output_names=outputs,
                              dynamic_shapes=shapes, verbose=False, external_data=False)
        except Exception as e:
            raise OnnxExportError(f"{path}: the ONNX exporter failed: "
                                  f"{str(e).splitlines()[0][:300]} (its output ended: "
                                  f"{noise.getvalue()[-300:]!r})") from None
    return path


@contextlib.contextmanager
def _quiet(*loggers):
    """The named loggers at ERROR only, restored afterwards."""
    import logging
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class OnnxModel:
    """The interface evaluation and prediction use of a MultiTaskModel (call with a
    batch, eval/train/to, encodings), over onnxruntime sessions, on the CPU."""
    training = False

    def __init__(self, folder: str | Path, tasks: dict, encodings: dict[str, str]):
        try:
            import onnxruntime
        except ImportError:
            raise OnnxExportError("the onnx backend needs onnxruntime: "
                                  "pip install 'minbert[onnx]'") from None
        self.encodings, self.folder = encodings, Path(folder)

        def session(path):
            return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        if not (self.folder / ENCODER).is_file():
            raise OnnxExportError(f"{self.folder / ENCODER}: not found; export the run again "
                                  "with `minbert export RUN OUT --onnx`")
        self.encoder = session(self.folder / ENCODER)
        self.sessions = {name: session(self.folder / f"{name}.onnx") for name in tasks
                         if (self.folder / f"{name}.onnx").is_file()}
        # each head graph's inputs: those its pooling reads
        self.inputs = {name: {i.name for i in head.get_inputs()}
                       for name, head in self.sessions.items()}
        if not self.sessions:
            raise OnnxExportError(f"{self.folder}: no task graph; export the run with "
                                  "`minbert export RUN OUT --onnx`")

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def to(self, device):
        if torch.device(device).type != "cpu":
            raise OnnxExportError(f"the onnx backend runs on the CPU, not {device}")
        return self

    def __call__(self, batch: Batch) -> torch.Tensor:
        if batch.task not in self.sessions:
            raise OnnxExportError(f"{self.folder / (batch.task + '.onnx')}: not found; this "
                                  f"export has graphs for {', '.join(self.sessions)}")
        head, wanted = self.sessions[batch.task], self.inputs[batch.task]
        feeds = {}
        for number, segment in enumerate(batch.segments):
            inputs = {key: segment[key].cpu().numpy() for key in SEGMENT_INPUTS}
            states, pooled = self.encoder.run(None, inputs)
            for key, value in zip(HEAD_INPUTS, (states, inputs["attention_mask"], pooled)):
                if f"{key}_{number}" in wanted:
                    feeds[f"{key}_{number}"] = value
        return torch.from_numpy(head.run(["logits"], feeds)[0])
