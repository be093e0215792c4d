"""The held-out selection split: disjoint from training, stratified, the same in every
process; with it, the epoch is chosen on it and the dev files are scored once."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from minbert.build import checked_config
from minbert.tasks import build_task
from minbert.training import train

from helpers import tiny_config_values, write_task_files


@pytest.fixture(scope="module")
def sst_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sst")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), [60, 120, 80, 120, 20])
    rng.shuffle(labels)
    rows = "".join(f"{i}\tid{i:04d}\t sentence {i}\t{y}\n" for i, y in enumerate(labels))
    (folder / "train.csv").write_text("\tid\tsentence\tsentiment\n" + rows, encoding="utf-8")
    reversed_rows = "".join(reversed(rows.splitlines(keepends=True)))
    (folder / "reversed.csv").write_text("\tid\tsentence\tsentiment\n" + reversed_rows,
                                         encoding="utf-8")
    return folder


def split(folder, file="train.csv", **kwargs):
    task = build_task("sst", {"train_files": [file]})
    return task.read_train_and_validation(folder, seed=0, validation=0.2, **kwargs)


def test_the_split_is_disjoint_and_stratified(sst_files):
    train_part, held, _ = split(sst_files)
    assert not set(train_part.ids) & set(held.ids)
    assert len(train_part) + len(held) == 400
    for label, count in zip(range(5), (60, 120, 80, 120, 20)):
        assert (held.labels == label).sum() == round(0.2 * count)  # 20% of every class


def test_the_split_depends_on_ids_not_row_order_subsampling_or_run_seed(sst_files):
    _, held, _ = split(sst_files)
    _, from_reversed, _ = split(sst_files, "reversed.csv")
    assert sorted(held.ids) == sorted(from_reversed.ids)
    task = build_task("sst", {"train_files": [{"path": "train.csv", "subsample": 100}]})
    train_part, subsampled, _ = task.read_train_and_validation(sst_files, seed=7,
                                                               validation=0.2)
    assert sorted(subsampled.ids) == sorted(held.ids) and len(train_part) == 100
    _, other, _ = split(sst_files, validation_seed=1)
    assert sorted(other.ids) != sorted(held.ids)  # its own seed changes it


def test_the_split_is_identical_in_another_process(sst_files):
    code = ("import sys; from minbert.tasks import build_task; "
            "t = build_task('sst', {'train_files': ['train.csv']}); "
            "print(','.join(sorted(t.read_train_and_validation(sys.argv[1], seed=0, "
            "validation=0.2)[1].ids)))")
    out = subprocess.run([sys.executable, "-c", code, str(sst_files)], capture_output=True,
                         text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip().split(",") == sorted(split(sst_files)[1].ids)


def test_scores_are_stratified_by_bands_of_the_range():
    sts = build_task("sts", {})
    assert sts.strata(np.array([0.0, 0.99, 1.0, 2.5, 4.2, 5.0])).tolist() == [0, 0, 1, 2, 4, 4]


@pytest.mark.slow
def test_with_a_validation_split_the_epoch_is_chosen_on_it_and_dev_scored_once(
        tmp_path, tiny_checkpoint):
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data", repeat=5), tiny_checkpoint,
                                tmp_path / "run", epochs=3)
    values["data"]["validation"] = 0.2
    dev = train(checked_config(values))
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text()
               .splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert all("validation" in r and "dev" not in r for r in epochs)
    final = [r for r in records if r["type"] == "final"]
    assert len(final) == 1 and final[0]["dev"] == dev
    best = max(epochs, key=lambda r: r["validation"]["overall"])
    assert final[0]["selected_epoch"] == best["epoch"]
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert state["dev"] == dev and state["metrics"] == best["validation"]
    assert (tmp_path / "run" / "predictions" / "sst-dev-output.csv").is_file()
    assert train(checked_config(values)) == dev  # finished: no second scoring
    assert (tmp_path / "run" / "log.jsonl").read_text().count('"type": "final"') == 1
