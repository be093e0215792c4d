"""Long work reports progress: a bar on a terminal, plain lines (never `\r` frames) where
output goes to a file; minbert's warnings as one line."""
import io
import warnings

import pytest

from minbert import cli, progress
from minbert.build import checked_config
from minbert.data import MinbertWarning
from minbert.training import train

from helpers import tiny_config_values, write_task_files


def test_without_a_terminal_progress_is_plain_lines_with_counts_and_eta():
    out = io.StringIO()  # not a terminal
    bar = progress.Progress(10, "epoch 1", every=0.0, stream=out)
    for _ in range(4):
        bar.update()
    bar.set_postfix(loss="0.500")
    bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 5  # one a step (every 0 s)
    assert lines[0].startswith("epoch 1: 1/10 steps (10%), 0:00:00 elapsed, ETA ")
    assert lines[4].startswith("epoch 1: 5/10 steps (50%)") and lines[4].endswith(", loss=0.500")


def test_a_quiet_interval_prints_nothing_and_a_disabled_bar_nothing_at_all():
    out = io.StringIO()
    with progress.Progress(3, "scoring sst", unit="batch", every=3600, stream=out) as bar:
        bar.update()
    assert out.getvalue() == ""
    with progress.Progress(3, "x", enabled=False, every=0.0, stream=out) as bar:
        bar.update()
    assert out.getvalue() == ""


def test_training_with_output_to_a_file_reports_steps_and_scoring(
        tmp_path, tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data"), tiny_checkpoint,
                                tmp_path / "run", epochs=1)
    train(checked_config(values))
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "epoch 1: 2/2 steps (100%)" in err  # round-robin: two steps of all three tasks
    assert "scoring sst: 1/1 batches" in err


def test_minbert_warnings_are_one_line_and_others_keep_their_form():
    line = cli._one_line_warning("x.csv: skipped 2 row(s)", MinbertWarning,
                                 "/elsewhere/caller.py", 7)
    assert line == "minbert: warning: x.csv: skipped 2 row(s)\n"
    other = cli._one_line_warning("deprecated", DeprecationWarning, "/site-packages/lib.py", 3)
    assert "DeprecationWarning" in other and "lib.py:3" in other


def test_the_cli_installs_the_one_line_form(capsys):
    with warnings.catch_warnings():
        assert cli.main(["compare", "no-such-a", "no-such-b"]) == 2
        assert warnings.formatwarning is cli._one_line_warning
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("minbert 0.")
