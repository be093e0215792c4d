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


def test_scoring_holds_bf16_weights_with_autocasts_numbers_and_restores_them(tiny_run,
                                                                             monkeypatch):
    """evaluation.outputs casts the linear layers' weights once per scoring instead of
    autocast casting them on every call: the same numbers, the fp32 tensors put back."""
    import contextlib
    import minbert.evaluation as evaluation
    config, tasks, model, dev = tiny_run
    before = {k: (v.data_ptr(), v.dtype) for k, v in model.state_dict().items()}
    held = {name: evaluation.outputs(model, tasks[name], data, 8, CPU, torch.bfloat16)
            for name, data in dev.items()}
    after = {k: (v.data_ptr(), v.dtype) for k, v in model.state_dict().items()}
    assert after == before  # the very tensors, still fp32
    monkeypatch.setattr(evaluation, "inference_weights",
                        lambda *args: contextlib.nullcontext())
    for name, data in dev.items():  # autocast casting on every call, as before
        assert torch.equal(held[name], evaluation.outputs(model, tasks[name], data, 8, CPU,
                                                          torch.bfloat16))
    seen = []

    def failing_forward(batch):
        seen.append(model.encoder.pooler.dense.weight.dtype)
        raise RuntimeError("interrupted")
    monkeypatch.setattr(model, "forward", failing_forward)
    with pytest.raises(RuntimeError, match="interrupted"):
        with devices.inference_weights(model, torch.bfloat16, CPU):
            model(None)
    assert seen == [torch.bfloat16]
    assert {k: (v.data_ptr(), v.dtype) for k, v in model.state_dict().items()} == before


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


@pytest.fixture
def measured(monkeypatch, tmp_path, tiny_checkpoint):
    """A CPU with bf16 instructions, a fresh cache and a fake timer whose bf16 speed-up the
    test sets; returns (model, the speed-up setter, the measurements taken)."""
    from minbert.model import BertModel
    monkeypatch.setenv("MINBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    speed, calls = {"bf16": 1.0}, []

    def fake_time(model, dtype, batch_shape, training):
        calls.append((dtype, training, batch_shape))
        return 1.0 if dtype is None else 1.0 / speed["bf16"]
    monkeypatch.setattr(devices, "time_steps", fake_time)
    return BertModel.from_pretrained(tiny_checkpoint), speed, calls


def test_auto_keeps_fp32_where_bf16_measures_slower(measured):
    model, speed, calls = measured
    speed["bf16"] = 0.65
    dtype, why = resolve_precision("auto", CPU, model, (32, 64))
    assert dtype is None and why == "fp32 (auto: bf16 a training step measured 0.65x fp32 here)"
    assert [(d, t) for d, t, _ in calls] == [(None, True), (torch.bfloat16, True)]


def test_auto_picks_bf16_where_it_measures_faster(measured):
    model, speed, calls = measured
    speed["bf16"] = 1.7
    dtype, why = resolve_precision("auto", CPU, model, (32, 64), training=False)
    assert dtype == torch.bfloat16 and "inference measured 1.70x fp32 here" in why
    speed["bf16"] = 1.05  # below MIN_GAIN: not worth bf16's rounding
    devices.cache_file().unlink()
    assert resolve_precision("auto", CPU, model, (32, 64))[0] is None


def test_a_measurement_is_cached_for_this_machine_and_shape_only(measured, monkeypatch):
    model, speed, calls = measured
    speed["bf16"] = 0.65
    resolve_precision("auto", CPU, model, (32, 64))
    taken = len(calls)
    speed["bf16"] = 1.7  # the cache answers: nothing is measured again
    assert resolve_precision("auto", CPU, model, (32, 64))[0] is None
    assert len(calls) == taken
    assert resolve_precision("auto", CPU, model, (32, 64), training=False)[0] == torch.bfloat16
    assert len(calls) == taken + 2  # inference is measured on its own, once
    key = next(iter(json.loads(devices.cache_file().read_text())))
    assert devices.cpu_name() in key and torch.__version__ in key
    assert resolve_precision("auto", CPU, model, (16, 64))[0] == torch.bfloat16  # new shape
    monkeypatch.setattr(devices, "cpu_name", lambda: "another CPU")
    calls.clear()
    assert resolve_precision("auto", CPU, model, (32, 64))[0] == torch.bfloat16
    assert calls  # another machine: measured again
    devices.cache_file().write_text("not json")  # a broken cache is measured over
    calls.clear()
    assert resolve_precision("auto", CPU, model, (32, 64))[0] == torch.bfloat16 and calls


def test_a_cpu_without_bf16_instructions_is_not_measured(measured, monkeypatch):
    model, speed, calls = measured
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx2"})
    assert resolve_precision("auto", CPU, model)[0] is None and not calls


def test_timing_steps_leaves_the_model_and_the_rng_as_they_were(tiny_checkpoint):
    from minbert.model import BertModel
    model = BertModel.from_pretrained(tiny_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    for dtype in (None, torch.bfloat16):
        assert devices.time_steps(model, dtype, (4, 8), training=True) > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
