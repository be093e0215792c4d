"""Where a run computes and in what precision: the device a config names, and the autocast
dtype that `precision = "auto"` picks on it (on a CPU, by measuring both)."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from minbert.config import ConfigKeyError


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """'auto' is CUDA when present, else the CPU; under torchrun, 'cuda' is the rank's GPU.
    A device this machine does not have is an error naming `option`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise ConfigKeyError(f"{option} = {name!r}: this machine has "
                                 f"{count or 'no'} CUDA device(s); use auto or cpu")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{os.environ['LOCAL_RANK']}"
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigKeyError(f"{option} = 'mps': MPS is not available here; use auto or cpu")
    return torch.device(name)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fp:
            for line in fp:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    """The CPU's model name (as /proc/cpuinfo gives it), for cache keys and benchmarks."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fp:
            for line in fp:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> str:
    """The CPU, its cores and vector instructions, torch and its threads: printed beside
    every timing (benchmarks, a run's start record), since the same code runs 1.5x apart
    on CPUs that differ in these."""
    flags = sorted(_cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                    "amx_tile", "amx_bf16"})
    return (f"{cpu_name()}, {os.cpu_count()} cores ({', '.join(flags) or 'no AVX2/AVX-512'}); "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


# bf16 must beat fp32 by this factor to be chosen: it costs precision, so it must pay
MIN_GAIN = 1.1
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def resolve_precision(name: str, device: torch.device, model: nn.Module | None = None,
                      batch_shape: tuple[int, int] = (32, 64), training: bool = True
                      ) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for `precision` ('auto', 'bf16', 'fp32') on `device` (None: fp32),
    and why. 'auto' is bf16 on a CUDA GPU with bf16. On a CPU without bf16 instructions
    (avx512_bf16, AMX) it is fp32; on one with them it is measured: a few steps of `model`
    (a BertModel) at `batch_shape` (batch, tokens) in fp32 and in bf16 autocast, cached
    per machine (`precision_speedup`), and bf16 only where it is at least MIN_GAIN times
    faster (a CPU whose hypervisor hides AMX reports avx512_bf16 and runs bf16 slower).
    Without a model to measure, the instructions decide."""
    if name == "fp32":
        return None, "fp32 (asked for)"
    if name == "bf16":
        return torch.bfloat16, "bf16 autocast (asked for)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 autocast (auto: the GPU supports bf16)"
        return None, "fp32 (auto: the GPU has no bf16)"
    if device.type != "cpu":
        return None, f"fp32 (auto: no bf16 rule for {device.type})"
    native = sorted(_cpu_flags() & BF16_FLAGS)
    if not native:
        return None, "fp32 (auto: the CPU has neither avx512_bf16 nor amx_bf16)"
    if model is None:
        return torch.bfloat16, f"bf16 autocast (auto: the CPU has {' and '.join(native)})"
    speedup = precision_speedup(model, batch_shape, training)
    what = "a training step" if training else "inference"
    if speedup >= MIN_GAIN:
        return torch.bfloat16, f"bf16 autocast (auto: {what} measured {speedup:.2f}x fp32 here)"
    return None, f"fp32 (auto: bf16 {what} measured {speedup:.2f}x fp32 here)"


@contextlib.contextmanager
def inference_weights(model: nn.Module, dtype: torch.dtype | None, device):
    """Scoring under CPU autocast with the linear layers' weights held in `dtype` for the
    duration, the fp32 tensors put back afterwards (also after an error). Autocast casts
    every weight to bf16 on every call, so each batch paid for a copy of the whole model
    (8% of a scoring profile); holding the cast copies gives the same numbers, since
    autocast computes a linear layer in bf16 from exactly these rounded weights. Nothing is
    changed on other devices, in fp32, or for a compiled model (its graphs guard on dtypes)."""
    if dtype is None or torch.device(device).type != "cpu" or any(
            getattr(m, "_compiled_call_impl", None) is not None for m in model.modules()):
        yield
        return
    kept = [(p, p.data) for m in model.modules() if isinstance(m, nn.Linear)
            for p in m.parameters(recurse=False) if p.dtype == torch.float32]
    try:
        for p, data in kept:
            p.data = data.to(dtype)
        yield
    finally:
        for p, data in kept:
            p.data = data


# ---------------------------------------------------------------------- measuring bf16
def measured_shape(batch_size: int, max_length: int) -> tuple[int, int]:
    """The batch shape `auto` times: the run's batch size at a typical length (64 tokens,
    or max_length when shorter; the batches are length-sorted, so most are short)."""
    return batch_size, min(64, max_length)


def cache_file() -> Path:
    """Where measurements are kept: $MINBERT_CACHE, else the user's cache folder."""
    root = os.environ.get("MINBERT_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minbert"
    return Path(root) / "precision.json"


def _cache_key(model: nn.Module, batch_shape: tuple[int, int]) -> str:
    """What a measurement holds for: this CPU, torch, thread count, model and batch shape."""
    config = model.config
    shape = (f"{config.num_hidden_layers}x{config.hidden_size}x{config.num_attention_heads}"
             f"x{config.intermediate_size}")
    return (f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
            f"bert {shape} | batch {batch_shape[0]}x{batch_shape[1]}")


def time_steps(model: nn.Module, dtype: torch.dtype | None, batch_shape: tuple[int, int],
               training: bool, steps: int = 2) -> float:
    """Seconds per step of `model` on random tokens (after one warm-up step): forward and
    backward when `training`, else forward only; on a copy, with the RNG left as it was."""
    batch, tokens = batch_shape
    model = copy.deepcopy(model).train(training)
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(5, model.config.vocab_size, (batch, tokens),
                                         generator=generator),
              "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
              "token_type_ids": torch.zeros(batch, tokens, dtype=torch.long)}
    with torch.random.fork_rng(devices=[]):
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            with torch.set_grad_enabled(training), torch.autocast(
                    "cpu", dtype=dtype, enabled=dtype is not None):
                hidden = model(**inputs)[0]
            if training:
                hidden.float().pow(2).mean().backward()
            times.append(time.perf_counter() - start)
    return min(times[1:])


def precision_speedup(model: nn.Module, batch_shape: tuple[int, int], training: bool
                      ) -> float:
    """fp32's time over bf16's for a step of `model` here (> 1: bf16 is faster), from the
    cache when this machine, torch, model and batch shape were measured before; else
    measured with `time_steps` (a few seconds) and cached."""
    path, key, mode = cache_file(), _cache_key(model, batch_shape), \
        "training" if training else "inference"
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key) if isinstance(cache.get(key), dict) else {}
    if not isinstance(entry.get(mode), (int, float)) or entry[mode] <= 0:
        fp32 = time_steps(model, None, batch_shape, training)
        bf16 = time_steps(model, torch.bfloat16, batch_shape, training)
        entry[mode] = round(fp32 / bf16, 3)
        cache[key] = entry
        try:  # a cache that cannot be written only costs the measurement next time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass
    return float(entry[mode])
