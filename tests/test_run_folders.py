"""Run folders are safe to share and hard to lose: run files never execute code, a finished
run is never replaced by accident, one process trains in a folder at a time, and the CLI
answers every expected failure with one line and exit code 2."""
import json
import os
import shutil

import pytest
import torch

from minbert import cli
from minbert.build import checked_config
from minbert.runs import RunError, RunFolder, load_state
from minbert.training import train

from helpers import tiny_config_values, write_task_files


class CodeOnLoad:
    """A pickle that runs a shell command when unpickled, as a crafted run file would."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_checkpoint):
    """A one-epoch tiny run (config.json, log.jsonl, checkpoint.pt, best.pt) and its values."""
    root = tmp_path_factory.mktemp("finished")
    (root / "data").mkdir()
    write_task_files(root / "data")
    values = tiny_config_values(root / "data", tiny_checkpoint, root / "run", epochs=1)
    train(checked_config(values))
    return root / "run", values


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run, to tamper with."""
    import shutil
    source, values = finished_run
    shutil.copytree(source, tmp_path / "run")
    return tmp_path / "run", {**values, "run_dir": str(tmp_path / "run")}


def cli_error(args, capsys) -> str:
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------- crafted files
@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "train"])
def test_a_crafted_best_pt_never_runs_code(run_copy, tmp_path, capsys, command):
    run, values = run_copy
    marker = tmp_path / "pwned"
    torch.save({"model": CodeOnLoad(marker), "metrics": {}}, run / "best.pt")
    if command == "train":  # a finished run reads best.pt for its metrics
        with pytest.raises(RunError, match="best.pt: refused to load") as error:
            train(checked_config(values))
        err = str(error.value)
    else:
        args = [command, str(run)] + ([str(tmp_path / "export")] if command == "export" else [])
        err = cli_error(args, capsys)
    assert f"{run / 'best.pt'}: refused to load" in err
    assert not marker.exists()


def test_a_crafted_checkpoint_pt_never_runs_code(run_copy, tmp_path):
    run, values = run_copy
    marker = tmp_path / "pwned"
    torch.save({"model": CodeOnLoad(marker), "config": values}, run / "checkpoint.pt")
    with pytest.raises(RunError, match="checkpoint.pt: refused to load"):
        train(checked_config(values))
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"PK\x03\x04 truncated", "cannot be read; truncated, or not a minbert run file"),
    (None, r"not a minbert run file \(no optimizer, config, epoch, rng\)"),
])
def test_a_truncated_or_foreign_checkpoint_is_named(run_copy, content, message):
    run, values = run_copy
    if content is None:  # a state dict of someone else's model: tensors, no run state
        torch.save({"model": {"w": torch.zeros(2)}}, run / "checkpoint.pt")
    else:
        (run / "checkpoint.pt").write_bytes(content)
    with pytest.raises(RunError, match=message) as error:
        train(checked_config(values))
    assert str(run / "checkpoint.pt") in str(error.value)


def test_run_files_load_with_weights_only(finished_run):
    run, _ = finished_run
    for name in ("checkpoint.pt", "best.pt"):
        torch.load(run / name, weights_only=True)  # raises if anything but data is inside
    state = load_state(run / "checkpoint.pt", ("train_outputs",))
    assert all(isinstance(t, torch.Tensor) for outputs in state["train_outputs"]
               for preds, labels in outputs.values() for t in preds + labels)


# ---------------------------------------------------------------------- nothing is lost
def test_a_finished_run_without_its_checkpoint_is_not_overwritten(run_copy, capsys):
    run, values = run_copy
    (run / "checkpoint.pt").unlink()
    before = {name: (run / name).read_bytes() for name in ("config.json", "log.jsonl",
                                                           "best.pt")}
    with pytest.raises(RunError, match="already holds a run .* --overwrite"):
        train(checked_config(values))
    assert before == {name: (run / name).read_bytes() for name in before}


def test_a_finished_run_logs_its_final_record_once(run_copy, capsys):
    """Dev-selected too: the chosen epoch's dev scores, once, also when run again; run again,
    a finished run is read, not "resumed" (no resume record, no "resuming ... epoch 2")."""
    run, values = run_copy
    final = RunFolder(run).final_record()
    best = load_state(run / "best.pt", ("metrics",))
    assert final["dev"] == best["metrics"] and final["selected_epoch"] == best["epoch"] == 1
    log = (run / "log.jsonl").read_text()
    capsys.readouterr()
    assert train(checked_config(values)) == best["metrics"]  # finished: nothing to do
    assert (run / "log.jsonl").read_text() == log
    out = capsys.readouterr().out
    assert "already trained (1 of 1 epochs" in out and "resuming" not in out


def test_a_run_killed_before_its_first_checkpoint_starts_again(run_copy):
    """Only config.json and the start of a log: nothing the run would not compute again."""
    run, values = run_copy
    for name in ("checkpoint.pt", "best.pt"):
        (run / name).unlink()
    shutil.rmtree(run / "predictions")
    log = run / "log.jsonl"
    log.write_text(log.read_text().splitlines(True)[0])
    train(checked_config(values))
    records = [json.loads(line)["type"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert records.count("start") == 1 and (run / "best.pt").exists()
    values = {**values, "train": {**values["train"], "lr": 5e-4}}
    with pytest.raises(RunError, match="holds a run of a different config"):
        train(checked_config(values))  # a different run is never restarted over it


def test_overwrite_replaces_the_run_on_purpose(run_copy, tmp_path):
    run, values = run_copy
    (run / "checkpoint.pt").unlink()
    (run / "notes.txt").write_text("mine")
    values = {**values, "train": {**values["train"], "lr": 5e-4}}  # another config, too
    train(checked_config(values), overwrite=True)
    starts = [line for line in (run / "log.jsonl").read_text().splitlines()
              if '"type": "start"' in line]
    assert len(starts) == 1
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 5e-4
    assert (run / "notes.txt").read_text() == "mine"  # files the run did not write stay


def test_predict_on_a_folder_that_is_not_a_run_creates_nothing(tmp_path, capsys):
    err = cli_error(["predict", str(tmp_path)], capsys)
    assert "config.json: not found" in err and not (tmp_path / "predictions").exists()


def test_unwritable_outputs_are_found_before_the_model_loads(run_copy, capsys, monkeypatch):
    run, _ = run_copy
    import minbert.loading

    def must_not_load(*args):
        raise AssertionError("the model was loaded before the output was checked")
    monkeypatch.setattr(minbert.loading, "load_run", must_not_load)
    (run / "a-file").write_text("x")
    err = cli_error(["predict", str(run), "--out", str(run / "a-file" / "out")], capsys)
    assert "cannot create the output folder" in err
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if str(path) == str(run) else real_access(path, mode)))
    err = cli_error(["evaluate", str(run)], capsys)  # root may write anywhere: pretend
    assert f"{run}: the run folder is not writable" in err


# ---------------------------------------------------------------------- one owner
def test_a_second_process_is_refused_naming_the_first(tmp_path, run_copy):
    run, values = run_copy
    holder = RunFolder(run)
    holder.lock()  # a separate open file: flock treats it as another owner
    try:
        with pytest.raises(RunError, match=rf"in use by PID {os.getpid()} on"):
            train(checked_config(values))
    finally:
        holder.unlock()
    assert (run / "run.lock").read_text() == ""  # released cleanly


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_reported(run_copy, capsys):
    run, values = run_copy
    (run / "run.lock").write_text("PID 999999 on elsewhere\n")  # written, never released
    (run / "checkpoint.pt.999999.tmp").write_bytes(b"half a checkpoint")
    train(checked_config(values))  # the run is finished: it only reads its best metrics
    assert "taking over" in capsys.readouterr().err
    assert not list(run.glob("*.tmp"))


@pytest.mark.slow
def test_the_lock_is_released_when_its_process_is_killed(tmp_path):
    import subprocess
    import sys
    import time
    script = ("import sys, time; from minbert.runs import RunFolder; "
              "RunFolder(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=f"in use by PID {child.pid}"):
            RunFolder(tmp_path).lock()
    finally:
        child.kill()
        child.wait()
    deadline = time.time() + 10
    folder = RunFolder(tmp_path)
    while True:  # the kernel drops the lock with the process
        try:
            folder.lock()
            break
        except RunError:
            assert time.time() < deadline
            time.sleep(0.1)
    folder.unlock()


# ---------------------------------------------------------------------- seeds
def test_seeds_train_one_run_each_and_summarise_them(tmp_path, tiny_checkpoint, capsys):
    from minbert.seeds import train_seeds
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data"), tiny_checkpoint,
                                tmp_path / "runs", epochs=1)
    config = checked_config(values)
    first = train_seeds(config, [0])
    assert set(first["runs"]) == {"0"} and first["summary"]["overall"]["n"] == 1
    strict = json.loads((tmp_path / "runs" / "seeds.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in seeds.json"))
    assert strict["summary"]["overall"]["std"] is None
    log = (tmp_path / "runs" / "seed-0" / "log.jsonl").read_text()
    from minbert.build import build_plan
    from minbert.recipes import seeds
    capsys.readouterr()
    assert seeds(build_plan(config), [0]) == 0  # finished: read, and its scores printed
    printed = capsys.readouterr().out
    assert "1 seed (" in printed and "nan" not in printed and "±" not in printed
    assert f"{first['summary']['overall']['mean']:.4f}" in printed
    # "killed between seeds": the same command with more seeds trains only the new ones
    result = train_seeds(config, [0, 1, 2])
    assert (tmp_path / "runs" / "seed-0" / "log.jsonl").read_text().startswith(log)
    assert '"type": "start"' not in (tmp_path / "runs" / "seed-0" / "log.jsonl").read_text()[
        len(log):]
    assert json.loads((tmp_path / "runs" / "seed-1" / "config.json").read_text())[
        "train"]["seed"] == 1
    overall = [result["runs"][str(s)]["overall"] for s in (0, 1, 2)]
    summary = result["summary"]["overall"]
    assert summary["mean"] == pytest.approx(sum(overall) / 3) and summary["n"] == 3
    assert summary["low"] <= summary["mean"] <= summary["high"]
    saved = json.loads((tmp_path / "runs" / "seeds.json").read_text())
    assert saved["summary"]["overall"]["mean"] == pytest.approx(summary["mean"])
    # a later command adding seeds summarises the folder's earlier ones of the same config
    from dataclasses import replace
    other = replace(config, train=replace(config.train, lr=3e-4))
    train_seeds(other, [4])  # another config's seed in the same folder: left out
    capsys.readouterr()
    assert seeds(build_plan(config), [3]) == 0
    assert "4 seeds (" in capsys.readouterr().out
    saved = json.loads((tmp_path / "runs" / "seeds.json").read_text())
    assert saved["seeds"] == [0, 1, 2, 3] and saved["summary"]["overall"]["n"] == 4
    assert saved["runs"]["1"] == result["runs"]["1"]


def test_the_interval_of_the_mean_is_students_t():
    from minbert.stats import mean_interval
    result = mean_interval([0.70, 0.72, 0.74])
    # mean 0.72, s = 0.02, t(0.975, 2) = 4.303: half-width 4.303 · 0.02 / √3
    assert result["mean"] == pytest.approx(0.72) and result["std"] == pytest.approx(0.02)
    assert result["high"] - result["mean"] == pytest.approx(4.302653 * 0.02 / 3 ** 0.5,
                                                            rel=1e-5)


def test_bad_seeds_are_refused_before_any_work(tmp_path, capsys):
    err = cli_error(["train", "--config", "configs/quick.toml", "--run-dir", str(tmp_path / "r"),
                     "--seeds", "0,x"], capsys)
    assert "--seeds '0,x': give integers" in err and not (tmp_path / "r").exists()
    err = cli_error(["train", "--config", "configs/quick.toml", "--run-dir", str(tmp_path / "r"),
                     "--seeds", "1,1"], capsys)
    assert "give distinct non-negative seeds" in err


def test_a_setting_added_since_a_run_started_counts_at_its_default():
    from minbert.runs import config_changes
    config = checked_config({})
    saved = config.to_dict()
    del saved["data"]["validation"]  # written by a version without the setting
    assert config_changes(saved, config) == []
    changed = checked_config({"data": {"validation": 0.1}})
    assert config_changes(saved, changed) == ["data.validation: 0.0 -> 0.1"]


def test_finished_seeds_without_checkpoints_are_read_not_retrained_or_cleared(
        tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """Seeds trained by separate processes (one `--seeds K` each, as benchmarks/gpu_seeds.py
    runs them) and shared without their .pt files still summarise and compare."""
    from dataclasses import replace

    from minbert import seeds
    data = tmp_path / "data"
    data.mkdir()
    write_task_files(data, repeat=3)
    configs = {}
    for name in ("a", "b"):
        values = tiny_config_values(data, tiny_checkpoint, tmp_path / name, epochs=1)
        values["data"]["validation"] = 0.2
        values["train"]["lr"] = 1e-3 if name == "a" else 3e-4
        configs[name] = checked_config(values)
        for seed in (0, 1):
            seeds.train_seeds(configs[name], [seed])
        (tmp_path / name / "seeds.json").unlink()  # each process wrote its own one-seed file
    capsys.readouterr()
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "mean over the common seeds" in out and out.count("\noverall") == 1

    finals = {}
    for seed in (0, 1):
        folder = RunFolder(tmp_path / "a" / f"seed-{seed}")
        finals[str(seed)] = folder.final_record()["dev"]
        folder.checkpoint.unlink()
        folder.best.unlink()
    logs = {p: p.read_text() for p in (tmp_path / "a").glob("seed-*/log.jsonl")}
    monkeypatch.setattr(seeds, "train", lambda *a, **k: pytest.fail("retrained a seed"))
    result = seeds.train_seeds(configs["a"], [0, 1])
    assert result["runs"] == finals and result["summary"]["overall"]["n"] == 2
    assert {p: p.read_text() for p in logs} == logs
    with pytest.raises(RunError, match=r"finished run of a different config \(train.lr"):
        seeds.train_seeds(replace(configs["a"], train=replace(configs["a"].train, lr=0.1)),
                             [0])
    monkeypatch.undo()
    # `minbert train` on one of them refuses: the results are kept, not cleared
    seed_0 = replace(configs["a"], run_dir=str(tmp_path / "a" / "seed-0"),
                     train=replace(configs["a"].train, seed=0))
    with pytest.raises(RunError, match="final record in log.jsonl"):
        train(seed_0)
    assert (tmp_path / "a" / "seed-0" / "predictions").is_dir()
    assert RunFolder(tmp_path / "a" / "seed-0").final_record()["dev"] == finals["0"]


def test_a_specialists_folder_expands_to_every_specialists_runs(tmp_path):
    """evaluate, predict and minbert.load read RUN (a --specialists folder) as the
    ensemble of all its specialists' runs: seeds folders by their seeds, runs as they are."""
    from minbert.runs import expand_seeds
    for part in ("specialist-sst/seed-0", "specialist-sst/seed-1", "specialist-sts"):
        (tmp_path / "spec" / part).mkdir(parents=True)
        (tmp_path / "spec" / part / "config.json").write_text("{}")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "config.json").write_text("{}")
    assert expand_seeds([tmp_path / "one", tmp_path / "spec"]) == [
        str(tmp_path / "one"), str(tmp_path / "spec/specialist-sst/seed-0"),
        str(tmp_path / "spec/specialist-sst/seed-1"), str(tmp_path / "spec/specialist-sts")]
