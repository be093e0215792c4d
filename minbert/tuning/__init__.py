"""Hyperparameter search, `minbert tune`: Optuna's samplers, pruners and storage; every
trial an ordinary run folder.

A study is a folder (the config's run_dir, or --run-dir):

    study.json     the study's name, its storage (a password in the URL is not written) and
                   what it searches
    study.db       the SQLite storage, the default (nothing to install or start)
    trial-0003/    one run folder per trial: resumable, and `minbert evaluate` reads it
    trials.csv     every trial: its state, validation overall, parameters and wall time
    best.toml      the best trial as a config that inherits the base config

The search space is the config's `[tune.space]` table, any config key mapped to one of

    "train.lr" = {log_uniform = [1e-5, 3e-4]}     # also uniform; step = ... for a grid
    "train.epochs" = {int = [1, 3]}               # also log_int
    "train.combiner" = {choices = ["sum", "pcgrad", "famo"]}

and each entry's ends (or choices) are checked on the config when it loads, so a key that
does not exist or a value it cannot take is refused before any training. The objective is
the overall score on the held-out validation split (data.validation > 0), never dev: each
epoch's score goes to the pruner, and a trial's value is that of its chosen epoch.

Several workers run one study: `minbert tune` started again on the same folder, on other
machines with the same `--storage` URL, or `--jobs N` processes on this one (their cores
split between them). `--trials N` is the number of finished (complete or pruned) trials
the study should hold; a worker stops when it holds them. A trial whose worker died on this
machine (SIGKILL, a lost session) is marked failed when a worker starts here again and
queued once more with the same parameters, resuming from its run folder's checkpoint.
"""
from minbert.tuning.report import write_study_report
from minbert.tuning.space import (Dimension, TuneConfig, TuneError, load_study_config,
                                  parse_tune, trial_values)
from minbert.tuning.study import Study, is_study, load_study, to_toml, trials_table

__all__ = ["Dimension", "Study", "TuneConfig", "TuneError", "is_study", "load_study", "load_study_config",
           "parse_tune", "to_toml", "trial_values", "trials_table", "write_study_report"]
