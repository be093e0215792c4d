"""The run config: loaded, inherited, overridden, and every bad value refused when it is
loaded (before weights or data), with the key named."""
import math

import pytest

from minbert import cli
from minbert.build import load_plan
from minbert.config import ConfigKeyError, load_config


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown key train.lrr"),
    ("train.sampler='random'", "train.sampler = 'random'; use one of"),
    ("data.batch_size='big'", "data.batch_size: expected int"),
    ("data.batch_size=0", "data.batch_size must be positive"),
    ("modle.pooling='cls'", "unknown key 'modle'"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigKeyError, match=message):
        load_plan("configs/baseline.toml", [override])


def test_configs_inherit_and_flags_override():
    config = load_config("configs/random-sampling.toml", ["train.lr=2e-5"])
    assert config.model.pair_encoding == "bi" and config.tasks["quora"]["subsample"] == 0.1
    assert config.train.lr == 2e-5
    assert load_config("configs/cross-encoding.toml").model.pair_encoding == "cross"


def test_cli_reports_a_bad_option_without_a_traceback(capsys):
    assert cli.main(["train", "--config", "configs/baseline.toml", "train.epochs=-1"]) == 2
    assert "train.epochs must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path("configs").glob("*.toml")))
def test_every_shipped_config_loads_and_validates(path):
    plan = load_plan(path, ['train.device="auto"'])  # GPU recipes too, on this machine
    assert plan.config.run_dir.startswith("runs/")
    assert list(plan.tasks) == plan.config.data.tasks
    assert [r.name for r in plan.regularizers] == (
        ["smart"] * plan.config.smart.enabled + list(plan.config.regularizers))


def test_a_declared_task_missing_its_columns_is_named():
    from minbert.tasks import build_task
    with pytest.raises(ValueError, match="tasks.nli.label_column is required"):
        build_task("nli", {"kind": "classification", "text_columns": ["a", "b"]})
    with pytest.raises(ValueError, match="tasks.nli: not a built-in task"):
        build_task("nli", {})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        build_task("sst", {"colour": "red"})




# Each value below trained the wrong thing with exit code 0, failed late, or crashed with a
# traceback; each is now refused when the config is loaded, naming the key.
@pytest.mark.parametrize("override, message", [
    ("train.clip_norm=-1", "train.clip_norm must be ≥ 0, got -1.0"),
    ("data.dev_limit=-1", "data.dev_limit must be ≥ 0"),
    ("train.max_steps=-1", "train.max_steps must be ≥ 0"),
    ("train.lr=-1e-5", "train.lr must be positive"),
    ("train.lr=nan", "train.lr: nan is not a finite number"),
    ("train.warmup=1.5", r"train.warmup must be in \[0, 1\)"),
    ("model.head_dropout=1.0", r"model.head_dropout must be in \[0, 1\)"),
    ("smart.epsilon=0", "smart.epsilon must be positive"),
    ("smart.teacher_momentum=1.5", r"smart.teacher_momentum must be in \[0, 1\]"),
    ("train.combiner='famous'", "train.combiner = 'famous'; use one of cagrad, famo, pcgrad, sum"),
    ("train.combiner='cagrad' train.combiner_options={c=-1}",
     r"train.combiner_options.c \(CAGrad's radius\) must be ≥ 0"),
    ("train.combiner='pcgrad' train.combiner_options={c=1}",
     "train.combiner_options: pcgrad takes no option 'c'"),
    ("train.device='gpu'", "train.device = 'gpu'; use auto, cpu, cuda or cuda:N"),
    ("smart.overrides={nli={adversarial_weight=2}}", "smart.overrides.nli: no task 'nli'"),
    ("smart.overrides={sts={norm='foo'}}", "smart.overrides.sts.norm = 'foo'; use one of inf, l2"),
    ("smart.overrides={sts={adversarial_weight=-1}}",
     "smart.overrides.sts.adversarial_weight must be ≥ 0"),
    ("smart.overrides={sts={teacher_momentum=0.5}}",
     "unknown key smart.overrides.sts.teacher_momentum"),
    ("tasks.sst.num_clases=5", r"tasks.sst: unknown key\(s\) \['num_clases'\]"),
    ("tasks.sst.num_classes='5'", "tasks.sst.num_classes: an integer from 2 to 100,000, got '5'"),
    ("tasks.sst.num_classes=4000000000", "tasks.sst.num_classes: an integer from 2 to 100,000"),
    ("tasks.sst.label_names=['bad','good']", r"tasks.sst.label_names: 5 distinct names"),
    ("tasks.sts.low=5.0", r"tasks.sts: low \(5.0\) must be below high"),
    ("tasks.nli.kind='classification'", r"\[tasks.nli\] configures a task that is not in "
                                        "data.tasks"),
    ("tasks.sst.output_prefix='../../../x'", "tasks.sst.output_prefix: '../../../x' is not a "
                                             "plain file name"),
    ("tasks.sst.subsample=0", "tasks.sst.subsample: subsample is a fraction"),
    ("tasks.sst.train_files=[{file='x.csv'}]", "tasks.sst.train_files: each entry is a file"),
    ("data.tasks=['sst','sst']", "data.tasks lists a task twice"),
    ("run_dir=5", "run_dir must be a folder path"),
])
def test_bad_values_are_refused_when_the_config_is_loaded(override, message):
    with pytest.raises(ConfigKeyError, match=message):
        load_plan("configs/quick.toml", override.split(" "))


def test_bad_config_values_fail_in_the_cli_before_any_weights_load(tmp_path, capsys):
    """The model folder does not exist: an error about it would mean the weights were
    looked for before the config was checked."""
    code = cli.main(["train", "--config", "configs/quick.toml", "--run-dir", str(tmp_path / "r"),
                     "model.checkpoint='/nowhere/bert'", "train.clip_norm=-1"])
    err = capsys.readouterr().err
    assert code == 2 and "train.clip_norm" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli.main(["train", "--config", "configs/quick.toml", "--run-dir", str(tmp_path / "r"),
                     "model.checkpoint='/nowhere/bert'", "train.device='cuda'"])
    err = capsys.readouterr().err
    assert code == 2 and "train.device = 'cuda': this machine has no CUDA device" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, message", [
    ('inherit = 5\n', "inherit = 5; give the file name of another config"),
    ('[tasks]\nsst = 3\n', r"\[tasks\] must be a table of tables, e.g. \[tasks.sst\]"),
    ('[train]\nlr = "fast"\n', "train.lr: expected float, got 'fast'"),
])
def test_bad_config_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigKeyError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_a_run_may_leave_out_a_builtin_task_its_base_config_set_up():
    config = load_plan("configs/quick.toml", ['data.tasks=["sst"]']).config  # quick sets quora
    assert config.data.tasks == ["sst"] and "quora" in config.tasks


def test_smart_overrides_are_applied_per_task_and_checked_like_the_section():
    config = load_config("configs/quick.toml",
                         ["smart.overrides={sts={adversarial_weight=5, norm='l2'}}"])
    sts = config.smart.for_task("sts")
    assert sts.adversarial_weight == 5 and sts.norm == "l2"
    assert config.smart.for_task("sst") == config.smart
    assert math.isclose(config.smart.adversarial_weight, 1.0)


def test_a_list_of_bare_words_needs_no_toml_quoting():
    config = load_config("configs/quick.toml", ["data.tasks=[sst,sts]", "train.sampler=sequential"])
    assert config.data.tasks == ["sst", "sts"] and config.train.sampler == "sequential"


def test_every_command_has_a_description_and_an_example(capsys):
    for command in cli.EXAMPLES:
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "example:\n  minbert " + command in text
        assert "%%" not in text  # a help string's escape, printed as is in a description
