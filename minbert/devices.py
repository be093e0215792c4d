"""Where a run computes and in what precision: the device a config names, and the autocast
dtype that `precision = "auto"` picks on it."""
from __future__ import annotations

import os

import torch

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


def resolve_precision(name: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for `precision` ('auto', 'bf16', 'fp32') on `device` (None: fp32),
    and why. 'auto' is bf16 where the hardware computes it natively (a CUDA GPU with bf16; a
    CPU with avx512_bf16 or AMX), where it measured 1.8x faster per training step on CPU;
    elsewhere bf16 is emulated and slower, so fp32."""
    if name == "fp32":
        return None, "fp32 (asked for)"
    if name == "bf16":
        return torch.bfloat16, "bf16 autocast (asked for)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 autocast (auto: the GPU supports bf16)"
        return None, "fp32 (auto: the GPU has no bf16)"
    if device.type == "cpu":
        native = sorted(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
        if native:
            return torch.bfloat16, f"bf16 autocast (auto: the CPU has {' and '.join(native)})"
        return None, "fp32 (auto: the CPU has neither avx512_bf16 nor amx_bf16)"
    return None, f"fp32 (auto: no bf16 rule for {device.type})"
