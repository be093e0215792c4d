"""Inputs crafted to do harm: names that would escape the output folder or inject markup,
links and foreign folders that would be clobbered, outputs cut short, runs that are not
comparable, secrets that would be written down. Each is refused with one line naming the
file or key, and nothing outside the asked-for folder changes."""
import json
import shutil

import pytest

from minbert import cli
from minbert.build import checked_config
from minbert.config import ConfigKeyError
from minbert.data import DataError, read_examples
from minbert.runs import RunError, RunFolder
from minbert.training import train

from helpers import tiny_config_values, write_task_files


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_checkpoint):
    """A one-epoch tiny run and its config values."""
    root = tmp_path_factory.mktemp("hostile")
    write_task_files((root / "data").mkdir() or root / "data")
    values = tiny_config_values(root / "data", tiny_checkpoint, root / "run", epochs=1)
    train(checked_config(values))
    return root / "run", values


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run, to tamper with."""
    shutil.copytree(finished[0], tmp_path / "run")
    return tmp_path / "run"


def one_line_error(args, capsys) -> str:
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["/somewhere/ABS", "../../x", "<img src=x onerror=alert(1)>",
                                  "a.b", ""])
def test_a_task_name_that_is_a_path_or_markup_is_refused_when_the_config_loads(name):
    values = {"data": {"tasks": [name]},
              "tasks": {name: {"kind": "classification", "text_columns": ["sentence"],
                               "label_column": "label", "train_files": ["x.csv"]}}}
    with pytest.raises(ConfigKeyError, match="task name|data.tasks must list"):
        checked_config(values)


def test_a_crafted_config_json_cannot_make_the_report_write_outside_its_folder(
        run, tmp_path, capsys):
    saved = json.loads((run / "config.json").read_text())
    saved["data"]["tasks"] = ["../../escaped", *saved["data"]["tasks"]]
    saved["tasks"]["../../escaped"] = {"kind": "regression", "text_columns": ["sentence"],
                                       "label_column": "y", "train_files": ["x.csv"]}
    (run / "config.json").write_text(json.dumps(saved))
    err = one_line_error(["report", str(run), "--out", str(tmp_path / "out" / "report")],
                         capsys)
    assert "task name '../../escaped'" in err
    assert not list(tmp_path.rglob("escaped*"))


def test_runs_whose_folder_and_parent_share_names_get_their_own_report_sections(
        finished, tmp_path):
    from minbert.reports import write_report
    for group in ("g1", "g2"):
        shutil.copytree(finished[0], tmp_path / group / "x" / "run")
    write_report([tmp_path / "g1" / "x" / "run", tmp_path / "g2" / "x" / "run"],
                 tmp_path / "report")
    folders = sorted(p.name for p in (tmp_path / "report").iterdir() if p.is_dir())
    assert folders == ["x-run", "x-run-2"]
    assert all((tmp_path / "report" / f / "analysis.json").is_file() for f in folders)


# ---------------------------------------------------------------------- folders
@pytest.mark.parametrize("name", ["run.lock", "log.jsonl"])
def test_a_run_file_that_is_a_symbolic_link_is_refused_and_its_target_kept(
        finished, tmp_path, name):
    """A shared folder's lock or log pointing elsewhere: resuming would truncate it."""
    values = {**finished[1], "run_dir": str(tmp_path / "run")}
    shutil.copytree(finished[0], tmp_path / "run")  # resumable: it holds checkpoint.pt
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate me\n")
    (tmp_path / "run" / name).unlink(missing_ok=True)
    (tmp_path / "run" / name).symlink_to(target)
    with pytest.raises(RunError, match=f"{name}: is a symbolic link"):
        train(checked_config(values))
    assert target.read_text() == "do not truncate me\n"


def test_train_refuses_a_folder_of_files_it_did_not_write(finished, tmp_path):
    folder = tmp_path / "run"
    (folder / "tensorboard").mkdir(parents=True)
    (folder / "tensorboard" / "events").write_text("someone's curves")
    (folder / "log.jsonl").write_text('{"type": "mine"}\n')
    values = {**finished[1], "run_dir": str(folder)}
    with pytest.raises(RunError, match="no training run of its own"):
        train(checked_config(values))
    assert (folder / "tensorboard" / "events").read_text() == "someone's curves"
    assert (folder / "log.jsonl").read_text() == '{"type": "mine"}\n'


def test_pretrain_refuses_a_training_run_folder(run, finished, capsys):
    before = {p.name: p.stat().st_size for p in run.iterdir() if p.is_file()}
    err = one_line_error(["pretrain", "--run-dir", str(run), *_flags(finished[1]),
                          "pretrain.max_steps=1"], capsys)
    assert "holds a training run" in err
    assert {p.name: p.stat().st_size for p in run.iterdir() if p.is_file()} == before


def _flags(values) -> list[str]:
    return [f'model.checkpoint="{values["model"]["checkpoint"]}"',
            f'data.dir="{values["data"]["dir"]}"', "data.tasks=[\"sst\"]",
            f'tasks.sst.train_files={json.dumps(values["tasks"]["sst"]["train_files"])}',
            f'tasks.sst.dev_file="{values["tasks"]["sst"]["dev_file"]}"',
            f'tasks.sst.test_file="{values["tasks"]["sst"]["test_file"]}"']


def test_export_refuses_another_run_and_replaces_an_earlier_export_whole(
        run, finished, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(finished[0], other)
    config = (other / "config.json").read_text()
    err = one_line_error(["export", str(run), str(other)], capsys)
    assert "holds files that are not an export" in err
    assert (other / "config.json").read_text() == config
    out = tmp_path / "export"
    assert cli.main(["export", str(run), str(out)]) == 0
    (out / "onnx").mkdir()
    (out / "onnx" / "sst.onnx").write_text("a graph of the previous run")
    assert cli.main(["export", str(run), str(out)]) == 0
    assert not (out / "onnx").exists() and (out / "heads.json").is_file()
    assert not list(tmp_path.glob(".export.*"))


# ---------------------------------------------------------------------- outputs
def test_a_prediction_file_cut_short_is_refused_by_report_and_compare(run, tmp_path, capsys):
    path = run / "predictions" / "sst-dev-output.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))
    err = one_line_error(["report", str(run), "--out", str(tmp_path / "r")], capsys)
    assert "sst-dev-output.csv: holds" in err and "dev predictions the run made" in err
    err = one_line_error(["compare", str(run), str(run)], capsys)
    assert "sst-dev-output.csv: holds" in err


@pytest.mark.parametrize("file, value, message", [
    ("sst-dev-output.csv", "7", "predicts class 7, not one of sst's classes [0, 1, 2, 3, 4]"),
    ("sst-dev-output.csv", "2.5", "predicts class 2.5, not one of sst's classes"),
    ("sts-dev-output.csv", "nan", "line 2: 'nan' is not a finite number"),
    ("sts-dev-output.csv", "-inf", "line 2: '-inf' is not a finite number"),
])
def test_a_prediction_out_of_its_tasks_range_is_named_by_report_and_compare(
        run, tmp_path, capsys, file, value, message):
    path = run / "predictions" / file
    header, first, *rest = path.read_text().splitlines(keepends=True)
    path.write_text(header + first.split(",")[0] + f" , {value}\n" + "".join(rest))
    for args in (["report", str(run), "--out", str(tmp_path / "r")],
                 ["compare", str(run), str(run)]):
        err = one_line_error(args, capsys)
        assert f"{file}" in err and message in err, err


def test_predict_writes_its_own_folder_and_keeps_what_training_scored(run):
    scored = (run / "predictions" / "sst-dev-output.csv").read_text()
    assert cli.main(["predict", str(run), "--splits", "dev"]) == 0
    assert (run / "predictions" / "sst-dev-output.csv").read_text() == scored
    assert (run / "leaderboard" / "sst-dev-output.csv").is_file()


def test_dev_ids_must_be_unique_and_columns_named_once(tmp_path):
    path = tmp_path / "dev.csv"
    path.write_text("\tid\tsentence\tsentiment\n0\ta\tgood\t4\n1\tb\tbad\t0\n2\ta\tfine\t2\n")
    with pytest.raises(DataError, match=r"line 4: id 'a' is already on line 2"):
        read_examples(path, ["sentence"], "sentiment")
    path.write_text("id\tsentence\tsentiment\tsentiment\na\tgood\t4\t0\n")
    with pytest.raises(DataError, match=r"the header names \['sentiment'\] more than once"):
        read_examples(path, ["sentence"], "sentiment")


def _seed_copies(finished, folder, limit):
    """A --seeds folder of two copies of the finished run, its config scoring `limit` dev
    examples (0: all)."""
    for seed in (0, 1):
        shutil.copytree(finished[0], folder / f"seed-{seed}")
        saved = json.loads((folder / f"seed-{seed}" / "config.json").read_text())
        saved["data"]["dev_limit"] = limit
        (folder / f"seed-{seed}" / "config.json").write_text(json.dumps(saved))


def test_seed_folders_are_compared_on_shared_tasks_and_the_same_examples_only(
        finished, tmp_path, capsys):
    for name, keys in (("a", ["sst", "overall"]), ("b", ["sst", "sts", "overall"]),
                       ("q", ["quora", "overall"])):
        (tmp_path / name).mkdir()
        runs = {str(s): {k: 0.5 + s / 100 for k in keys} for s in (0, 1)}
        (tmp_path / name / "seeds.json").write_text(json.dumps({"runs": runs}))
    for first, second in (("a", "b"), ("b", "a")):  # sst only: no overall row to restate it
        assert cli.main(["compare", str(tmp_path / first), str(tmp_path / second)]) == 0
        rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[4:]]
        assert rows == ["sst"]
    err = one_line_error(["compare", str(tmp_path / "a"), str(tmp_path / "q")], capsys)
    assert "no task to compare" in err and "['sst']" in err and "['quora']" in err
    # the same tasks, but one scored on fewer dev examples: its seed runs say so
    _seed_copies(finished, tmp_path / "c", 0)
    _seed_copies(finished, tmp_path / "d", 3)
    err = one_line_error(["compare", str(tmp_path / "c"), str(tmp_path / "d")], capsys)
    assert "scored on different dev examples" in err
    # one run against a seeds folder: its examples are checked the same way
    err = one_line_error(["compare", str(finished[0]), str(tmp_path / "d")], capsys)
    assert "scored on different dev examples" in err
    assert cli.main(["compare", str(tmp_path / "c"), str(finished[0])]) == 0
    out = capsys.readouterr().out
    assert "(one run) against each seed of" in out
    assert all("+0.0000" in line for line in out.splitlines()[4:] if line[:1].isalpha())


# ---------------------------------------------------------------------- limits
@pytest.mark.parametrize("args, message", [
    (["compare", "A", "A", "--resamples", "0"], "resamples = 0: give 1 to 1,000,000"),
    (["compare", "A", "A", "--resamples", "-5"], "resamples = -5: give 1 to 1,000,000"),
    (["compare", "A", "A", "--resamples", "1000000000000"], "give 1 to 1,000,000"),
])
def test_impossible_resample_counts_are_one_line_errors(run, capsys, args, message):
    args = [str(run) if a == "A" else a for a in args]
    assert message in one_line_error(args, capsys)


def test_too_short_a_max_length_and_empty_seeds_are_refused(finished, tmp_path, capsys):
    with pytest.raises(ConfigKeyError, match="model.max_length must be ≥ 8, got 2"):
        checked_config({**finished[1], "model": {**finished[1]["model"], "max_length": 2}})
    config = tmp_path / "c.toml"
    config.write_text(f'run_dir = "{tmp_path / "r"}"\n')
    err = one_line_error(["train", "--config", str(config), "--seeds", ""], capsys)
    assert "--seeds ''" in err and not (tmp_path / "r").exists()


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_compare", interrupted)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with(parser(), "compare", interrupted))
    assert cli.main(["compare", "a", "b"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def _with(parser, command, func):
    parser._subparsers._group_actions[0].choices[command].set_defaults(func=func)
    return parser


def test_a_log_cut_mid_line_is_read_to_its_last_record_and_a_bad_line_is_named(tmp_path):
    folder = RunFolder(tmp_path)
    folder.append({"type": "start"})
    folder.append({"type": "epoch", "epoch": 1})
    with open(folder.log_file, "a") as fp:
        fp.write('{"type": "epo')  # a kill during a write
    assert [r["type"] for r in folder.records()] == ["start", "epoch"]
    folder.log_file.write_text('{"type": "start"}\nnot json\n{"type": "epoch"}\n')
    with pytest.raises(RunError, match=r"log.jsonl, line 2: not a JSON record"):
        folder.records()


# ---------------------------------------------------------------------- secrets
@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pw@db:5432/s", "postgresql://u:***@db:5432/s"),
    ("postgresql://db/s?user=u&password=pw", "postgresql://db/s?user=u&password=***"),
    ("mysql://u:p%40ss@db/s?passwd=x&ssl=1", "mysql://u:***@db/s?passwd=***&ssl=1"),
    ("postgresql://u@db:5432/s", "postgresql://u@db:5432/s"),  # no password, nothing hidden
])
def test_storage_passwords_are_never_shown(url, shown):
    from minbert.tuning.study import _shown
    assert _shown(url) == shown


def test_a_storage_url_given_as_an_override_is_kept_out_of_the_studys_files(
        tmp_path, tiny_checkpoint, monkeypatch):
    from test_tune import study_config

    from minbert.tuning import Study
    config = study_config(tmp_path, tiny_checkpoint)
    url = f"sqlite:///{tmp_path / 'shared.db'}?password=hunter2"
    study = Study.from_config(config, [f'tune.storage="{url}"', "train.lr=1e-3"])
    assert study.storage_url == url and study.overrides == ["train.lr=1e-3"]
    launched = {}
    monkeypatch.setattr("subprocess.Popen", lambda command, env: launched.update(
        command=command, env=env) or _Done())
    study.tune.jobs = 2
    study._spawn_workers()
    assert "hunter2" not in " ".join(launched["command"])
    assert launched["env"]["MINBERT_TUNE_STORAGE"] == url


class _Done:
    def wait(self):
        return 0


def test_a_seeds_folder_is_read_as_its_seeds(finished, tmp_path, capsys):
    """report: a row per seed; evaluate and minbert.load: the ensemble of the seeds;
    compare against one run: the run against each seed."""
    import minbert
    for seed in (0, 1):
        shutil.copytree(finished[0], tmp_path / "seeds" / f"seed-{seed}")
    seeds = str(tmp_path / "seeds")
    assert cli.main(["report", seeds, "--out", str(tmp_path / "r")]) == 0
    rows = (tmp_path / "r" / "ablation.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:3]] == ["seed-0", "seed-1"]
    capsys.readouterr()
    assert cli.main(["evaluate", seeds]) == 0
    assert "the ensemble of 2 seed runs" in capsys.readouterr().err
    assert len(minbert.load(seeds).runs) == 2
    (tmp_path / "seeds" / "seeds.json").write_text(json.dumps(
        {"runs": {"0": {"sst": 0.5, "overall": 0.5}, "1": {"sst": 0.6, "overall": 0.6}}}))
    assert cli.main(["compare", seeds, str(finished[0])]) == 0
    out = capsys.readouterr().out
    assert "(one run) against each seed of" in out and "\nsst " in out


# ---------------------------------------------------------------------- one line, not a traceback
@pytest.mark.parametrize("values, message", [
    ({"train": {"seed": 2 ** 70}}, r"train.seed must be in \[0, 4294967295\]"),
    ({"train": {"compile": True, "compile_backend": "nope"}},
     "train.compile_backend = 'nope'; use one of"),
    ({"train": {"x" * 1_000_000: 1}}, r"unknown key train.xxxxx+\.\.\.; \[train\] takes"),
])
def test_values_that_would_fail_late_are_refused_by_key(values, message):
    with pytest.raises(ConfigKeyError, match=message) as error:
        checked_config(values)
    assert len(str(error.value)) < 2000


def test_crafted_run_files_of_the_wrong_shape_are_one_line_errors(run, tmp_path, capsys):
    import torch
    torch.save({"model": "not weights", "metrics": {}}, run / "best.pt")
    err = one_line_error(["evaluate", str(run)], capsys)
    assert "best.pt: its weights do not fit" in err
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**state, "epoch": "one", "rng": {"torch": "x", "cuda": []}},
               run / "checkpoint.pt")
    config = run / "config.json"
    saved = json.loads(config.read_text())
    toml = tmp_path / "c.toml"
    from minbert.tuning import to_toml
    toml.write_text(to_toml({**{k: v for k, v in saved.items() if k != "tune"},
                             "run_dir": str(run)}))
    err = one_line_error(["train", "--config", str(toml)], capsys)
    assert "checkpoint.pt: a checkpoint field does not hold what this minbert wrote" in err


@pytest.mark.parametrize("content", ["[1, 2]", "[" * 200_000 + "]" * 200_000,
                                     '{"run_config": [1]}'])
def test_a_crafted_heads_json_is_a_one_line_error(run, tmp_path, capsys, content):
    out = tmp_path / "export"
    assert cli.main(["export", str(run), str(out)]) == 0
    (out / "heads.json").write_text(content)
    err = one_line_error(["evaluate", str(out)], capsys)
    assert "heads.json: not written by this minbert's export" in err


def test_a_subsample_that_keeps_nothing_names_its_key(finished, tmp_path):
    values = {**finished[1], "run_dir": str(tmp_path / "r")}
    values["tasks"] = {**values["tasks"], "sst": {**values["tasks"]["sst"],
                                                  "subsample": 0.001}}
    with pytest.raises(ValueError, match=r"tasks.sst.subsample: subsample 0.001 keeps no "
                                         r"example of 8; keep a larger share"):
        train(checked_config(values))


# ---------------------------------------------------------------------- a full disk
def test_a_checkpoint_the_disk_cannot_hold_is_a_one_line_error_naming_it(tmp_path,
                                                                        monkeypatch):
    """torch's writer reports a full disk as RuntimeError("... unexpected pos ..."): the
    file is named, the error is an OSError (the CLI's one line), the old file stays."""
    import torch

    from minbert.runs import save_state
    path = tmp_path / "checkpoint.pt"
    save_state({"model": {"w": torch.ones(2)}}, path)

    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 44096 "
                           "vs 43984")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="is the disk full") as e:
        save_state({"model": {"w": torch.zeros(2)}}, path)
    assert e.value.filename == str(path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["model"]["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_a_run_stopped_before_its_first_checkpoint_starts_again(finished, tmp_path, capsys,
                                                                monkeypatch):
    """The disk fills (or a kill lands) after epoch 1's best.pt and before its checkpoint:
    one line, and the same command then trains the run from the start."""
    import errno

    from minbert.training import Trainer
    from minbert.tuning.study import to_toml
    values = dict(finished[1], run_dir=str(tmp_path / "run"))
    config = tmp_path / "c.toml"
    config.write_text(to_toml(values), encoding="utf-8")

    def no_space(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.folder.checkpoint))
    monkeypatch.setattr(Trainer, "save_checkpoint", no_space)
    err = one_line_error(["train", "--config", str(config)], capsys)
    assert "checkpoint.pt: No space left on device" in err
    assert (tmp_path / "run" / "best.pt").is_file()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    monkeypatch.undo()
    assert cli.main(["train", "--config", str(config)]) == 0
    assert "an unfinished run without checkpoint.pt" in capsys.readouterr().err
    records = RunFolder(tmp_path / "run").records()
    assert [r["type"] for r in records].count("start") == 1
    assert records[-1]["type"] == "final"
    # a finished run whose checkpoint is gone is still refused (it has a final record)
    (tmp_path / "run" / "checkpoint.pt").unlink()
    err = one_line_error(["train", "--config", str(config)], capsys)
    assert "a final record in log.jsonl) with no checkpoint.pt to resume from" in err
