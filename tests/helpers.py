"""Small task files in the CS224N format, written by the tests themselves."""
import numpy as np

POSITIVE = ["the movie is good", "a great movie", "the movie is very good", "great"]
NEGATIVE = ["the movie is bad", "an awful movie", "the movie is not good", "awful"]
QUESTIONS = [("how do i learn python ?", "how do you learn python ?", 1),
             ("how do i cook rice ?", "how do you cook rice ?", 1),
             ("what is a cat ?", "what is a dog ?", 0),
             ("how do i learn python ?", "how do i cook rice ?", 0),
             ("what is a dog ?", "what is the dog ?", 1),
             ("a man plays guitar .", "a woman runs .", 0)]
SIMILAR = [("a man plays guitar .", "a man plays the guitar .", 4.8),
           ("a cat sits on the mat .", "the cat sits on a mat .", 4.5),
           ("a dog runs .", "a cat runs .", 2.0),
           ("a woman plays guitar .", "a man cooks rice .", 0.4),
           ("the dog runs .", "a dog runs .", 4.2),
           ("a man cooks rice .", "the cat sits .", 0.0)]


def write_task_files(folder, repeat: int = 1):
    """sst/quora/sts train, dev and test files; dev equals train (for overfitting)."""
    rows = [(s, 4) for s in POSITIVE] + [(s, 0) for s in NEGATIVE]
    sst = "\tid\tsentence\tsentiment\n" + "".join(
        f"{i}\ts{i}\t {s}\t{label}\n" for i, (s, label) in enumerate(rows * repeat))
    quora = "\tid\tsentence1\tsentence2\tis_duplicate\n" + "".join(
        f"{i}\tq{i}\t{a}\t{b}\t{float(y)}\n" for i, (a, b, y) in enumerate(QUESTIONS * repeat))
    sts = "\tid\tsentence1\tsentence2\tsimilarity\n" + "".join(
        f"{i}\tt{i}\t{a}\t{b}\t{y}\n" for i, (a, b, y) in enumerate(SIMILAR * repeat))
    for name, text in (("sst", sst), ("quora", quora), ("sts", sts)):
        (folder / f"{name}-train.csv").write_text(text, encoding="utf-8")
        (folder / f"{name}-dev.csv").write_text(text, encoding="utf-8")
    (folder / "sst-test.csv").write_text("0\t\tid\tsentence\n1\t0.0\tx1\t the movie is good\n",
                                         encoding="utf-8")
    return folder


def tiny_config_values(folder, checkpoint, run_dir, **train):
    """A run config over the fixture files and the tiny checkpoint, in fp32 (exact maths:
    sharded and whole batches, resumed and uninterrupted runs must agree)."""
    tasks = {
        "sst": {"train_files": ["sst-train.csv"], "dev_file": "sst-dev.csv",
                "test_file": "sst-test.csv"},
        "quora": {"train_files": ["quora-train.csv"], "dev_file": "quora-dev.csv",
                  "test_file": ""},
        "sts": {"train_files": ["sts-train.csv"], "dev_file": "sts-dev.csv", "test_file": ""},
    }
    return {"run_dir": str(run_dir), "tasks": tasks,
            "model": {"checkpoint": str(checkpoint), "max_length": 32},
            "data": {"dir": str(folder), "batch_size": 4, "eval_batch_size": 8},
            "train": {"epochs": 2, "lr": 1e-3, "warmup": 0.0, "log_every": 1, "precision": "fp32",
                      **train}}


def weights_equal(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
