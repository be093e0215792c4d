"""Runs killed with SIGKILL resume exactly; two gloo processes (torchrun) train the same
model as one process over the combined batches; torch.compile is an option."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from minbert.build import checked_config
from minbert.training import train

from helpers import tiny_config_values, weights_equal, write_task_files

pytestmark = pytest.mark.slow  # whole runs

# Runs one training in a fresh process. KILL names where the process kills itself with
# SIGKILL (nothing is flushed or cleaned up, as with `kill -9`), so the test can place the
# kill at a chosen point instead of racing a timer.
RUNNER = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    import minbert.training as training
    from minbert.build import checked_config

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    kill = os.environ.get("KILL", "")
    if kill == "mid-epoch":  # inside the 8th step of the run, before its update
        step = training.Trainer.train_step
        def train_step(self, *args):
            step(self, *args)
            if self.updates == 7:
                die()
        training.Trainer.train_step = train_step
    elif kill == "writing-checkpoint":  # the 3rd checkpoint's temporary file is written
        save, count = torch.save, [0]
        def torch_save(obj, path, *args, **kwargs):
            save(obj, path, *args, **kwargs)
            if Path(path).name.startswith("checkpoint.pt.") and str(path).endswith(".tmp"):
                count[0] += 1
                if count[0] == 3:
                    die()
        torch.save = torch_save
    elif kill == "evaluating":  # during the second epoch's dev evaluation
        evaluate, count = training.evaluate, [0]
        def evaluating(*args, **kwargs):
            count[0] += 1
            if count[0] == 2:
                die()
            return evaluate(*args, **kwargs)
        training.evaluate = evaluating
    with open(sys.argv[1]) as fp:
        training.train(checked_config(json.load(fp)))
""")


@pytest.fixture
def task_dir(tmp_path):
    (tmp_path / "data").mkdir()
    return write_task_files(tmp_path / "data", repeat=3)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path = tmp_path_factory.mktemp("runner") / "run_training.py"
    path.write_text(RUNNER, encoding="utf-8")
    return path


def run_process(runner, values, tmp_path, kill="", nproc=1):
    config = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.json"
    config.write_text(json.dumps(values), encoding="utf-8")
    env = {**os.environ, "KILL": kill, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, str(runner), str(config)]
    if nproc > 1:  # one thread each: two processes share this machine's cores
        env["OMP_NUM_THREADS"] = "1"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={nproc}", *command[1:]]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def final_state(run_dir):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    epochs = [json.loads(line)["dev"] for line in (run_dir / "log.jsonl").read_text()
              .splitlines() if '"type": "epoch"' in line]
    return state["model"], epochs


@pytest.mark.parametrize("kill", ["mid-epoch", "writing-checkpoint", "evaluating"])
def test_a_run_killed_with_sigkill_resumes_to_the_same_weights_and_metrics(
        task_dir, tiny_checkpoint, tmp_path, runner, kill):
    def config(run):  # PCGrad's order and SMART's teacher must survive the kill as well
        v = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / run, epochs=3,
                               checkpoint_every=2, combiner="pcgrad")
        v["smart"] = {"enabled": True}
        return v

    train(checked_config(config("whole")))
    values = config("killed")

    killed = run_process(runner, values, tmp_path, kill=kill)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "killed" / "checkpoint.pt").exists()
    if kill == "writing-checkpoint":  # the kill left a temporary file, not a torn checkpoint
        assert list((tmp_path / "killed").glob("checkpoint.pt.*.tmp"))
    before, _ = final_state(tmp_path / "killed")
    assert not weights_equal(before, final_state(tmp_path / "whole")[0])

    resumed = run_process(runner, values, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights, epochs = final_state(tmp_path / "killed")
    expected_weights, expected_epochs = final_state(tmp_path / "whole")
    assert weights_equal(weights, expected_weights)
    assert epochs == expected_epochs and len(epochs) == 3
    assert not list((tmp_path / "killed").glob("*.tmp"))  # the resumed run cleared them


def dropout_free(tiny_checkpoint, tmp_path):
    """The tiny checkpoint with dropout off, so that sharding cannot change the maths."""
    folder = tmp_path / "tiny-no-dropout"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# batch 5: shards of 3 and 2, so the loss weighting matters; batch 17: the 18-row tasks end
# on a batch of one, so one rank's share is empty
@pytest.mark.parametrize("combiner, batch_size", [("sum", 5), ("pcgrad", 17)])
def test_two_gloo_processes_match_one_process_over_the_combined_batches(
        task_dir, tiny_checkpoint, tmp_path, runner, combiner, batch_size):
    checkpoint = dropout_free(tiny_checkpoint, tmp_path)

    def values(run):
        v = tiny_config_values(task_dir, checkpoint, tmp_path / run, epochs=3,
                               combiner=combiner)
        v["model"]["head_dropout"] = 0.0
        v["data"]["batch_size"] = batch_size
        return v

    train(checked_config(values("single")))
    result = run_process(runner, values("ddp"), tmp_path, nproc=2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    single, single_epochs = final_state(tmp_path / "single")
    ddp, ddp_epochs = final_state(tmp_path / "ddp")
    # Summation order differs between one batch and two shards; Adam turns that float noise
    # into a few elements off by up to ~1e-4 (rows with near-zero gradients). A wrong
    # weighting or a missing all-reduce moves nearly every element, by far more.
    a = np.concatenate([ddp[name].numpy().ravel() for name in single])
    b = np.concatenate([single[name].numpy().ravel() for name in single])
    off = np.abs(a - b) > 2e-5 + 1e-4 * np.abs(b)
    assert off.mean() < 0.005 and np.abs(a - b).max() < 5e-4, (off.mean(), np.abs(a - b).max())
    for a, b in zip(ddp_epochs, single_epochs):
        assert a.keys() == b.keys()
        for task in a:
            assert a[task] == pytest.approx(b[task], abs=1e-4)
    log = (tmp_path / "ddp" / "log.jsonl").read_text()
    assert log.count('"type": "start"') == 1  # only rank 0 wrote


def test_compile_option_trains(task_dir, tiny_checkpoint, tmp_path):
    # the eager backend runs the torch.compile machinery (graph capture) without needing
    # a C++ toolchain; inductor is the default for users
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "run", epochs=1,
                                compile=True, compile_backend="eager")
    metrics = train(checked_config(values))
    assert set(metrics) == {"sst", "quora", "sts", "overall"}
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert not any("_orig_mod" in key for key in state)  # loadable without compile
