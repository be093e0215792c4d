"""`minbert tune`: the search space checked before training, SQLite studies that workers
join, resumption after SIGKILL, pruning, best.toml."""
import csv
import json
import os
import signal
import subprocess
import sys
import tomllib

import pytest

from minbert import cli
from minbert.config import ConfigKeyError, load_config
from minbert.tuning import Study, TuneError, load_study_config, parse_tune, to_toml

from helpers import tiny_config_values, write_task_files

optuna = pytest.importorskip("optuna")

SPACE = {"train.lr": {"log_uniform": [1e-4, 3e-3]},
         "train.combiner": {"choices": ["sum", "famo"]}}


def study_config(tmp_path, checkpoint, epochs=1, space=SPACE, **tune) -> str:
    """A config file over the fixture data and the tiny model, with a [tune] table."""
    data = tmp_path / "data"
    if not data.is_dir():
        data.mkdir()
        write_task_files(data, repeat=5)
    values = tiny_config_values(data, checkpoint, tmp_path / "study", epochs=epochs)
    values["data"]["validation"] = 0.2
    values["tune"] = {"trials": 3, "space": space, "sampler": "random", **tune}
    path = tmp_path / "study.toml"
    path.write_text(to_toml(values), encoding="utf-8")
    return str(path)


def study_of(folder):
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder}/study.db")


def states(folder) -> list[str]:
    return [t.state.name for t in study_of(folder).trials]


def tune_command(config, *args):
    return [sys.executable, "-m", "minbert", "tune", "--config", config, *args]


# ------------------------------------------------------------------ the space, checked
@pytest.mark.parametrize("entry, message", [
    ({"train.lrr": {"uniform": [0.1, 0.2]}}, "unknown key train.lrr"),
    ({"train.warmup": {"uniform": [0.0, 2.0]}}, "the value 2.0 is refused"),
    ({"train.epochs": {"uniform": [1, 3]}}, "expected int"),
    ({"train.combiner": {"choices": ["sum", "gradnorm"]}}, "'gradnorm' is refused"),
    ({"smart.norm": {"choices": ["inf", "l1"]}}, "'l1' is refused"),
    ({"train.lr": {"log_uniform": [0, 1e-3]}}, "needs low > 0"),
    ({"train.lr": {"uniform": [1e-3, 1e-4]}}, "low < high"),
    ({"train.lr": {"normal": [0, 1]}}, "give exactly one of"),
    ({"data.validation": {"uniform": [0.1, 0.2]}}, "cannot be searched"),
    ({"tasks.quora.subsample": {"int": [-5, 10]}}, "the value -5 is refused"),
])
def test_a_bad_search_space_entry_is_refused_naming_it(tmp_path, tiny_checkpoint, entry,
                                                        message):
    config = study_config(tmp_path, tiny_checkpoint, space=entry)
    with pytest.raises(ConfigKeyError, match=message) as e:
        load_study_config(config)
    assert f'tune.space."{next(iter(entry))}"' in str(e.value)


def test_a_bad_entry_fails_the_command_before_any_training(tmp_path, tiny_checkpoint,
                                                            capsys):
    config = study_config(tmp_path, tiny_checkpoint,
                          space={"train.warmup": {"uniform": [0.0, 2.0]}})
    assert cli.main(["tune", "--config", config]) == 2
    assert "tune.space.\"train.warmup\"" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_the_objective_needs_a_validation_split(tmp_path, tiny_checkpoint):
    config = study_config(tmp_path, tiny_checkpoint)
    with pytest.raises(TuneError, match="data.validation"):
        Study.from_config(config, ["data.validation=0.0"])


def test_base_values_outside_the_space_are_refused(tmp_path, tiny_checkpoint):
    config = study_config(tmp_path, tiny_checkpoint, start_with_base=True)
    with pytest.raises(ConfigKeyError, match="base value of train.lr, 0.01, is outside"):
        load_study_config(config, ["train.lr=1e-2"])
    assert load_config(config).tune["start_with_base"] is True


def test_more_jobs_than_cores_is_refused(tmp_path, tiny_checkpoint):
    config = study_config(tmp_path, tiny_checkpoint)
    with pytest.raises(TuneError, match="cores"):
        Study.from_config(config, jobs=len(os.sched_getaffinity(0)) + 1)


def test_unknown_tune_settings_are_refused(tmp_path, tiny_checkpoint):
    for override, message in (("tune.pruner=\"early\"", "tune.pruner"),
                              ("tune.trialz=3", "unknown key tune.trialz"),
                              ("tune.trials=0", "tune.trials must be positive")):
        with pytest.raises(ConfigKeyError, match=message):
            load_study_config(study_config(tmp_path, tiny_checkpoint), [override])


def test_grids_and_integers_parse_to_their_distributions():
    values = {"data": {"validation": 0.1},
              "tune": {"space": {"train.epochs": {"int": [1, 4]},
                                 "train.warmup": {"uniform": [0.0, 0.3], "step": 0.1},
                                 "train.sampler": {"choices": ["round-robin", "temperature"]}}}}
    tune, dims = parse_tune(values)
    dist = {d.key: d.distribution() for d in dims}
    assert (dist["train.epochs"].low, dist["train.epochs"].high) == (1, 4)
    assert dist["train.warmup"].step == 0.1
    assert dist["train.sampler"].choices == ("round-robin", "temperature")


def test_to_toml_writes_what_tomllib_reads():
    values = {"inherit": "../configs/quick.toml", "run_dir": "runs/x",
              "train": {"lr": 1.2e-05, "combiner": "famo", "clip_norm": 1.0, "epochs": 2},
              "tasks": {"quora": {"subsample": 4000, "train_files": ["a.csv", "b c.csv"]}},
              "smart": {"enabled": True, "overrides": {"sts": {"epsilon": 1e-06}}}}
    assert tomllib.loads(to_toml(values)) == values


# ------------------------------------------------------------------ studies that run
@pytest.mark.slow
def test_a_three_trial_study_completes_and_writes_best_toml(tmp_path, tiny_checkpoint,
                                                             capsys):
    config = study_config(tmp_path, tiny_checkpoint)
    assert cli.main(["tune", "--config", config]) == 0
    folder = tmp_path / "study"
    study = study_of(folder)
    assert states(folder) == ["COMPLETE"] * 3
    for trial in study.trials:  # an ordinary run folder, judged on validation, not dev
        run = folder / f"trial-{trial.number:04d}"
        assert trial.user_attrs["run_dir"] == str(run)
        saved = json.loads((run / "config.json").read_text())
        assert saved["train"]["combiner"] == trial.params["train.combiner"]
        assert saved["train"]["lr"] == pytest.approx(trial.params["train.lr"])
        import torch
        best = torch.load(run / "best.pt", weights_only=True)
        assert trial.value == pytest.approx(best["metrics"]["overall"])
        records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        assert all("dev" not in r for r in records)
    best = study.best_trial
    text = (folder / "best.toml").read_text()
    assert tomllib.loads(text)["inherit"] == os.path.relpath(config, folder)
    chosen = load_config(folder / "best.toml")  # inherits the base config, [tune] included
    assert chosen.train.lr == pytest.approx(best.params["train.lr"])
    assert chosen.train.combiner == best.params["train.combiner"]
    assert chosen.run_dir == str(folder / "best") and chosen.data.validation == 0.2
    with open(folder / "trials.csv", newline="") as fp:
        rows = list(csv.DictReader(fp))
    assert [r["state"] for r in rows] == ["complete"] * 3
    assert f"best: trial {best.number}" in capsys.readouterr().out

    # a second process joins the same study through its storage; the counts add up
    done = subprocess.run(tune_command(config, "--trials", "5"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    study = study_of(folder)
    assert states(folder) == ["COMPLETE"] * 5
    assert {t.user_attrs["pid"] for t in study.trials[3:]} != \
        {t.user_attrs["pid"] for t in study.trials[:3]}
    assert sorted(p.name for p in folder.glob("trial-*")) == [f"trial-{i:04d}"
                                                              for i in range(5)]
    # the report: every trial, the optimisation history, parameter importances
    assert cli.main(["report", str(folder), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "trials.md").read_text().splitlines()
    assert len(table) == 2 + 5 and "param train.lr" in table[0]
    for figure in ("history.png", "epochs.png", "importance.png"):
        assert (tmp_path / "report" / figure).stat().st_size > 1000
    # it searched the same space, so another space under the same study is refused
    with pytest.raises(TuneError, match="another space"):
        Study.from_config(config, ['tune.space."train.lr"={uniform=[1e-4, 2e-4]}']).open()


@pytest.mark.slow
def test_a_tuner_killed_mid_trial_resumes_and_finishes(tmp_path, tiny_checkpoint):
    config = study_config(tmp_path, tiny_checkpoint, epochs=4, trials=2)
    folder = tmp_path / "study"
    # the tuner kills itself (SIGKILL) right after trial 0's second epoch is checkpointed
    script = ("import os, signal, sys; from minbert import training; from minbert.tuning "
              "import Study\n"
              "end = training.Trainer.end_epoch\n"
              "def dying(self):\n"
              "    metrics = end(self)\n"
              "    if self.epoch == 2 and self.run_dir.name == 'trial-0000':\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return metrics\n"
              "training.Trainer.end_epoch = dying\n"
              "Study.from_config(sys.argv[1]).run()\n")
    child = subprocess.run([sys.executable, "-c", script, config], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert states(folder)[0] == "RUNNING"

    done = subprocess.run(tune_command(config), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "trial 0: its worker" in done.stderr
    study = study_of(folder)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 2 and study.trials[0].state.name == "FAIL"
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.params == study.trials[0].params
    assert retry.user_attrs["run_dir"] == str(folder / "trial-0000")  # the same folder...
    log = (folder / "trial-0000" / "log.jsonl").read_text()
    assert '"type": "resume"' in log  # ...resumed from its checkpoint, not started again
    assert log.count('"type": "start"') == 1


@pytest.mark.slow
def test_a_pruned_trial_is_recorded_as_pruned(tmp_path, tiny_checkpoint):
    # a threshold no score reaches: every trial is pruned after its first epoch
    config = study_config(tmp_path, tiny_checkpoint, epochs=3, trials=2, pruner="threshold",
                          pruner_options={"lower": 2.0}, start_with_base=True)
    study = Study.from_config(config)
    summary = study.run()
    first = study_of(study.folder).trials[0]  # the base config's own values came first
    assert first.params == {"train.lr": 1e-3, "train.combiner": "sum"}
    assert first.user_attrs["base"] is True
    assert states(study.folder) == ["PRUNED", "PRUNED"]  # pruned trials count as finished
    assert "best_trial" not in summary and not (study.folder / "best.toml").exists()
    records = [json.loads(x) for x in
               (study.folder / "trial-0000" / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records if r["type"] in ("epoch", "pruned")] == \
        ["epoch", "pruned"]
    assert "pruned by the threshold pruner" in records[-1]["reason"]
    assert study_of(study.folder).trials[0].intermediate_values.keys() == {1}


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_jobs_run_trials_in_parallel_processes(tmp_path, tiny_checkpoint):
    # trials of 10 epochs (several seconds each): long enough that a worker starting a few
    # seconds after the other (its imports on a loaded machine) still finds trials left;
    # with 3 epochs a quick machine's first worker once finished all four alone
    config = study_config(tmp_path, tiny_checkpoint, epochs=10, trials=4)
    done = subprocess.run(tune_command(config, "--jobs", "2"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 workers, 1 thread each" in done.stderr
    study = study_of(tmp_path / "study")
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) >= 4  # workers may each finish the trial they had started
    assert len({t.user_attrs["pid"] for t in finished}) == 2
    assert (tmp_path / "study" / "best.toml").is_file()


def test_more_trials_reuse_the_studys_overrides_and_a_mismatch_names_the_key(
        tmp_path, tiny_checkpoint, capsys):
    config = study_config(tmp_path, tiny_checkpoint)
    folder = str(tmp_path / "study")
    Study.from_config(config, ["train.warmup=0.2"], run_dir=folder).open()
    again = Study.from_config(config, [], run_dir=folder, trials=5)
    assert again.overrides == ["train.warmup=0.2"] and again.base["train"]["warmup"] == 0.2
    assert "the overrides stored with the study: train.warmup=0.2" in capsys.readouterr().err
    again.open()  # the same search: accepted
    other = Study.from_config(config, ["train.warmup=0.3"], run_dir=folder)
    with pytest.raises(TuneError, match=r"train.warmup: 0.2 -> 0.3"):
        other.open()
