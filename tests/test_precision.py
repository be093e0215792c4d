"""precision = "auto": bf16 autocast where the hardware computes bf16 natively, else fp32."""
import json

import numpy as np
import pytest
import torch

import minbert.devices as devices
from minbert.build import checked_config, encode_split
from minbert.devices import resolve_precision
from minbert.evaluation import predict
from minbert.loading import build_model
from minbert.tasks import build_tasks

from helpers import tiny_config_values, write_task_files

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, expected", [
    ({"avx512f", "avx512_bf16"}, torch.bfloat16),
    ({"amx_bf16", "amx_tile"}, torch.bfloat16),
    ({"avx512f", "avx2"}, None),  # bf16 would be emulated: slower than fp32
    (set(), None),                # no /proc/cpuinfo (macOS) or no flags line
])
def test_auto_follows_the_cpus_bf16_support(monkeypatch, flags, expected):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: flags)
    dtype, why = resolve_precision("auto", CPU)
    assert dtype == expected
    assert why.startswith("bf16" if expected else "fp32") and "auto" in why


def test_auto_on_cuda_asks_the_gpu(monkeypatch):
    for supported, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        assert resolve_precision("auto", torch.device("cuda"))[0] == expected


def test_explicit_precisions_are_kept(monkeypatch):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: set())
    assert resolve_precision("bf16", CPU)[0] == torch.bfloat16  # asked for, even if slow
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx512_bf16"})
    assert resolve_precision("fp32", CPU) == (None, "fp32 (asked for)")


@pytest.fixture
def tiny_run(tmp_path, tiny_checkpoint):
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data", repeat=4), tiny_checkpoint,
                                tmp_path / "run", epochs=1)
    config = checked_config(values)
    tasks = build_tasks(config)
    model, tokenizer = build_model(config, tasks)
    return config, tasks, model.eval(), encode_split(config, tasks, tokenizer, "dev")


def test_bf16_predictions_match_fp32_on_a_tiny_model(tiny_run):
    """Tolerance: bf16 keeps 8 bits of mantissa (relative error ~4e-3 per rounding)."""
    config, tasks, model, dev = tiny_run
    for name, data in dev.items():
        fp32 = predict(model, tasks[name], data, 8, CPU, None)
        bf16 = predict(model, tasks[name], data, 8, CPU, torch.bfloat16)
        if name == "sts":  # scores on 0-5
            np.testing.assert_allclose(bf16, fp32, atol=0.05)
            assert not np.array_equal(bf16, fp32)  # autocast did run in bf16
        else:  # classes: equal, except where fp32's own margin is within bf16's error
            with torch.no_grad():
                logits = torch.cat([model(data.batch(i)) for i in data.sorted_batches(8)])
            margin = (logits.abs().amin(-1) if logits.shape[-1] == 1 else
                      logits.topk(2).values.diff().abs().squeeze(-1))
            order = np.concatenate(data.sorted_batches(8))
            clear = np.zeros(len(data), dtype=bool)
            clear[order] = (margin > 0.05).numpy()
            assert clear.any() and np.array_equal(bf16[clear], fp32[clear])


def test_the_log_and_console_say_which_precision_and_why(tmp_path, tiny_checkpoint, capsys,
                                                         monkeypatch):
    from minbert.training import train
    monkeypatch.setattr(devices, "_cpu_flags", lambda: set())
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data"), tiny_checkpoint,
                                tmp_path / "run", epochs=1, precision="auto", device="cpu")
    train(checked_config(values))
    start = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    why = "fp32 (auto: the CPU has neither avx512_bf16 nor amx_bf16)"
    assert start["type"] == "start" and start["precision"] == why
    assert f"device cpu, precision {why}" in capsys.readouterr().out
