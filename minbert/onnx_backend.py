"""ONNX: a trained model's encoder and heads as one graph per task, run by onnxruntime.

`minbert export RUN OUT --onnx` writes OUT/onnx/TASK.onnx beside the HF folder. A graph
takes one segment (a sentence, or a cross-encoded pair: input_ids_0, attention_mask_0,
token_type_ids_0), two (a bi-encoded pair: ..._0 and ..._1) or three (a pair encoded
both ways: the cross-encoded pair, then each sentence), each (batch, length) with both
dimensions dynamic, and returns the task's outputs (batch, outputs), the
logits the PyTorch model gives. `minbert.load(OUT, backend="onnx")` predicts with them.
Needs `pip install 'minbert[onnx]'` (onnx and onnxscript to export, onnxruntime to run).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minbert.config import ENCODINGS
from minbert.data import Batch

SEGMENT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxExportError(RuntimeError):
    """An export or a graph that cannot be used; the message says what to install or do."""


class _OneSegment(nn.Module):
    """The model for one task, its segments as flat named tensors (the graph's inputs)."""

    def __init__(self, model, task: str):
        super().__init__()
        self.model, self.task = model, task

    def _run(self, *tensors):
        segments = [dict(zip(SEGMENT_INPUTS, tensors[i:i + 3]))
                    for i in range(0, len(tensors), 3)]
        return self.model(Batch(self.task, segments, None, np.zeros(0)))

    def forward(self, input_ids_0, attention_mask_0, token_type_ids_0):
        return self._run(input_ids_0, attention_mask_0, token_type_ids_0)


class _TwoSegments(_OneSegment):
    def forward(self, input_ids_0, attention_mask_0, token_type_ids_0,  # noqa: D102
                input_ids_1, attention_mask_1, token_type_ids_1):
        return self._run(input_ids_0, attention_mask_0, token_type_ids_0,
                         input_ids_1, attention_mask_1, token_type_ids_1)


class _ThreeSegments(_OneSegment):
    def forward(self, input_ids_0, attention_mask_0, token_type_ids_0,  # noqa: D102
                input_ids_1, attention_mask_1, token_type_ids_1,
                input_ids_2, attention_mask_2, token_type_ids_2):
        return self._run(input_ids_0, attention_mask_0, token_type_ids_0,
                         input_ids_1, attention_mask_1, token_type_ids_1,
                         input_ids_2, attention_mask_2, token_type_ids_2)


_WRAPPERS = {1: _OneSegment, 2: _TwoSegments, 3: _ThreeSegments}  # by segment count


def segments_of(model, task) -> int:
    return ENCODINGS[model.encodings[task.name]]


def export_onnx(model, tasks: dict, out: str | Path) -> list[Path]:
    """One graph per task under OUT/onnx/, dynamic in batch and length."""
    try:
        import onnx  # noqa: F401  (the exporter needs it, and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise OnnxExportError("exporting to ONNX needs onnx and onnxscript: "
                              "pip install 'minbert[onnx]'") from None
    from torch.export import Dim
    folder = Path(out) / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    longest = model.encoder.config.max_position_embeddings
    batch_dim = Dim("batch", min=1, max=65536)
    written = []
    for name, task in tasks.items():
        count = segments_of(model, task)
        wrapper = _WRAPPERS[count](model, name).eval()
        example, shapes = [], {}
        for segment in range(count):
            length = Dim(f"length_{segment}", min=2, max=longest)
            ids = torch.full((2, 6), 5, dtype=torch.long)
            mask = torch.ones_like(ids)
            mask[1, 4:] = 0
            example += [ids, mask, torch.zeros_like(ids)]
            shapes.update({f"{key}_{segment}": {0: batch_dim, 1: length}
                           for key in SEGMENT_INPUTS})
        path = folder / f"{name}.onnx"
        # the exporter's progress lines and warnings are its own business: kept, and shown
        # only if it fails
        noise = io.StringIO()
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(noise), \
                contextlib.redirect_stderr(noise), _quiet("torch.onnx", "torch.export"):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(wrapper, tuple(example), str(path), dynamo=True,
                                  input_names=list(shapes), output_names=["outputs"],
                                  dynamic_shapes=shapes, verbose=False)
            except Exception as e:
                raise OnnxExportError(f"{path}: the ONNX exporter failed: "
                                      f"{str(e).splitlines()[0][:300]} (its output ended: "
                                      f"{noise.getvalue()[-300:]!r})") from None
        written.append(path)
    return written


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
        self.sessions = {name: onnxruntime.InferenceSession(
            str(self.folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
            for name in tasks if (self.folder / f"{name}.onnx").is_file()}
        if not self.sessions:
            raise OnnxExportError(f"{self.folder}: no ONNX graph; export the run with "
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
        feeds = {f"{key}_{number}": segment[key].cpu().numpy()
                 for number, segment in enumerate(batch.segments) for key in SEGMENT_INPUTS}
        return torch.from_numpy(self.sessions[batch.task].run(None, feeds)[0])
