"""A study run by workers: Optuna's samplers, pruners and storage; every trial an ordinary
run folder; its results as trials.csv and best.toml."""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from minbert.build import build_plan
from minbert.config import build_config, flatten, parse_override, read_values, set_value
from minbert.runs import RESUMABLE_CHANGES, RunFolder, load_state, write_text_atomic
from minbert.training import StopTraining, train
from minbert.tuning.space import (TuneConfig, TuneError, base_params, check_study,
                                  trial_values)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError("minbert tune needs Optuna: pip install 'minbert[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _storage(url: str, study_dir: Path):
    """An Optuna storage from a URL: sqlite:///..., postgresql://..., mysql://..., or
    journal:PATH (a journal file, for file systems without a database)."""
    optuna = _optuna()
    url = url or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend
            path = url[len("journal:"):]
            if not path:
                raise ValueError("give a file after journal:, e.g. journal:runs/study.log")
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        if "://" not in url:
            raise ValueError("use an Optuna storage URL: sqlite:///FILE, postgresql://..., "
                             "mysql://..., or journal:FILE")
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # a driver not installed, a server not reachable, a bad URL
        raise TuneError(f"--storage / tune.storage {_shown(url)!r}: {e}") from None


SECRET_PARAMETERS = ("password", "passwd", "pwd")
STORAGE_ENV = "MINBERT_TUNE_STORAGE"  # how a worker receives the URL: never on its argv


def _shown(url: str) -> str:
    """The URL without its password, in the user part or the query (study.json, best.toml
    and messages may be shared)."""
    from urllib.parse import parse_qsl, urlencode
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    rest, _, query = rest.partition("?")
    if "@" in rest:
        credentials, host = rest.rsplit("@", 1)
        if ":" in credentials:  # a user alone is no secret
            rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    if query:
        pairs = [(k, "***" if k.lower() in SECRET_PARAMETERS else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        rest += "?" + urlencode(pairs, safe="*")
    return f"{scheme}://{rest}"


def _split_storage(overrides: list[str]) -> tuple[list[str], str | None]:
    """The overrides without `tune.storage=...` (which may hold a password), and its URL."""
    kept, storage = [], None
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["tune", "storage"] and isinstance(value, str):
            storage = value
        else:
            kept.append(text)
    return kept, storage


def _sampler(tune: TuneConfig, seed: int):
    optuna = _optuna()
    kind = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    try:
        return kind[tune.sampler](seed=seed, **tune.sampler_options)
    except TypeError as e:
        raise TuneError(f"tune.sampler_options {tune.sampler_options}: {e}") from None


def _pruner(tune: TuneConfig):
    optuna = _optuna()
    kind = {"median": optuna.pruners.MedianPruner,
            "percentile": optuna.pruners.PercentilePruner,
            "hyperband": optuna.pruners.HyperbandPruner,
            "threshold": optuna.pruners.ThresholdPruner,
            "none": optuna.pruners.NopPruner}[tune.pruner]
    try:
        return kind(**tune.pruner_options)
    except (TypeError, ValueError) as e:
        raise TuneError(f"tune.pruner_options {tune.pruner_options} for the {tune.pruner} "
                        f"pruner: {e}") from None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------ a study
@dataclass
class Study:
    """One study: its folder, settings, search space and the Optuna study behind them."""
    folder: Path
    config_file: Path
    overrides: list
    base: dict
    tune: TuneConfig
    dimensions: list
    storage_url: str = ""

    @classmethod
    def from_config(cls, config_file, overrides=(), run_dir=None, trials=None, storage=None,
                    jobs=None) -> "Study":
        overrides = list(overrides)
        stored = Path(run_dir or "") / "study.json" if run_dir else None
        if not overrides and stored is not None and stored.is_file():
            try:  # more trials for a study: its own overrides, unless others are given
                overrides = list(json.loads(stored.read_text(encoding="utf-8"))["overrides"])
            except (ValueError, KeyError, TypeError) as e:
                raise TuneError(f"{stored}: not a study record ({e})") from None
            if overrides:
                print(f"the overrides stored with the study: {' '.join(overrides)}",
                      file=sys.stderr)
        values = read_values(config_file, overrides)
        overrides, storage_override = _split_storage(overrides)
        storage = storage or storage_override
        if run_dir:
            values["run_dir"] = run_dir
        config, tune, dimensions = check_study(values, str(config_file))
        for name, given in (("trials", trials), ("storage", storage), ("jobs", jobs)):
            if given is not None:
                setattr(tune, name, given)
        if tune.trials < 1 or tune.jobs < 1:
            raise TuneError(f"--trials {tune.trials} / --jobs {tune.jobs}: give positive numbers")
        if not dimensions:
            raise TuneError(f"{config_file}: [tune.space] is empty; add the keys to search, "
                            "e.g. \"train.lr\" = {log_uniform = [1e-5, 3e-4]}")
        if not config.data.validation:
            raise TuneError(f"{config_file}: data.validation is 0; trials are judged on a "
                            "held-out share of the training files, never on dev: set it, "
                            "e.g. data.validation=0.1")
        if tune.jobs > _cores():
            raise TuneError(f"--jobs {tune.jobs}: this machine lets this process use "
                            f"{_cores()} cores; run at most that many trials at once")
        return cls(Path(config.run_dir), Path(config_file), overrides, values, tune,
                   dimensions, tune.storage)

    @property
    def name(self) -> str:
        return self.tune.study_name or self.folder.resolve().name

    def open(self, worker: int = 0):
        """The Optuna study (created on first use), checked to search this space."""
        optuna = _optuna()
        self.folder.mkdir(parents=True, exist_ok=True)
        storage = _storage(self.storage_url, self.folder)
        study = optuna.create_study(storage=storage, study_name=self.name,
                                    direction="maximize", pruner=_pruner(self.tune),
                                    load_if_exists=True)
        # what the trials compute; where a worker keeps data or which device it uses may
        # differ between workers (the settings a resumed run may change)
        base = {k: v for k, v in flatten(self.base).items()
                if k not in RESUMABLE_CHANGES and not k.startswith("tune")}
        search = json.loads(json.dumps({"space": self.tune.space, "base": base},
                                       sort_keys=True))
        known = study.user_attrs.get("search")
        if known is None:
            study.set_user_attr("search", search)
        elif known != search:
            differ = sorted(k for k in set(known["base"]) | set(search["base"])
                            if known["base"].get(k) != search["base"].get(k))
            differ += ["tune.space"] if known["space"] != search["space"] else []
            shown = ", ".join(f"{k}: {known['base'].get(k)!r} -> {search['base'].get(k)!r}"
                              if k != "tune.space" else k for k in differ[:8])
            raise TuneError(f"study {self.name!r} in {_shown(self.storage_url) or 'study.db'} "
                            f"searches another space or base config ({shown}); use another "
                            "run_dir, tune.study_name, or the config and overrides it was "
                            "started with")
        if self.tune.start_with_base and not study.trials:  # the hand-set values first
            study.enqueue_trial(base_params(self.base, self.dimensions),
                                user_attrs={"base": True}, skip_if_exists=True)
        seed = self.tune.seed + 1000 * worker + len(study.trials)
        study.sampler = _sampler(self.tune, seed)
        record = {"study_name": self.name, "storage": _shown(self.storage_url) or "study.db",
                  "config": str(self.config_file), "overrides": self.overrides,
                  "space": self.tune.space, "trials": self.tune.trials}
        write_text_atomic(self.folder / "study.json", json.dumps(record, indent=2) + "\n")
        return study

    # ------------------------------------------------------------------------- workers
    def run(self, worker: int | None = None, threads: int | None = None) -> dict:
        """Runs trials until the study holds `trials` finished ones (with --jobs N > 1 and
        no worker index: N worker processes), then writes trials.csv and best.toml."""
        if worker is None and self.tune.jobs > 1:
            self.open()  # created once, before the workers race to create it
            self._spawn_workers()
            return self.write_results(self.open())
        if threads:
            import torch
            torch.set_num_threads(threads)
        study = self.open(worker or 0)
        self.work(study)
        # a spawned worker leaves the results to the process that started it
        return self.write_results(study) if worker is None else {}

    def _spawn_workers(self) -> None:
        jobs = self.tune.jobs
        threads = max(1, _cores() // jobs)
        command = [sys.executable, "-m", "minbert", "tune", "--config", str(self.config_file),
                   "--run-dir", str(self.folder), "--trials", str(self.tune.trials),
                   "--threads", str(threads), *self.overrides]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if self.storage_url:  # in the environment, not on the command line (ps shows it)
            env[STORAGE_ENV] = self.storage_url
        print(f"{jobs} workers, {threads} thread{'s' if threads > 1 else ''} each", file=sys.stderr)
        workers = [subprocess.Popen([*command, "--worker", str(i)], env=env)
                   for i in range(jobs)]
        try:
            codes = [w.wait() for w in workers]
        except KeyboardInterrupt:
            for w in workers:
                w.terminate()
            raise
        if any(codes):
            raise TuneError(f"worker exit codes {codes}; the study keeps what finished, and "
                            "the same command continues it")

    def recover(self, study) -> None:
        """Trials left running by a worker that died on this machine: failed, and queued
        again with the same parameters (they resume from their run folder's checkpoint)."""
        optuna = _optuna()
        host = socket.gethostname()
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback",  # optuna >= 4.9
                        None) or optuna.storages.RetryFailedTrialCallback
        retry = retry(max_retry=3, inherit_intermediate_values=True)
        for trial in study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.RUNNING,)):
            attrs = trial.user_attrs
            if "host" in attrs:
                if attrs["host"] != host or _alive(attrs.get("pid")) \
                        or RunFolder(attrs["run_dir"]).in_use():
                    continue
            else:  # asked, and its worker died before it said where it runs
                started = trial.datetime_start or datetime.now()
                if (datetime.now() - started).total_seconds() < 120:
                    continue
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            retry(study, study.trials[trial.number])
            print(f"trial {trial.number}: its worker (PID {attrs.get('pid', '?')}) is gone; "
                  "queued again, to resume from "
                  f"{attrs.get('run_dir', 'the start')}", file=sys.stderr)

    def work(self, study) -> None:
        optuna = _optuna()
        states = optuna.trial.TrialState
        self.recover(study)
        distributions = {d.key: d.distribution() for d in self.dimensions}
        failures, start, done_here = 0, time.perf_counter(), 0
        while True:
            trials = study.get_trials(deepcopy=False)
            count = {s: sum(t.state == s for t in trials) for s in states}
            finished = count[states.COMPLETE] + count[states.PRUNED]
            if finished >= self.tune.trials:
                break
            if finished + count[states.RUNNING] >= self.tune.trials and not count[states.WAITING]:
                running = [t.number for t in trials if t.state == states.RUNNING]
                print(f"the study's last trials are running in other workers: {running}",
                      file=sys.stderr)
                break
            if failures >= self.tune.max_failures:
                raise TuneError(f"{failures} trials in a row failed; the last: "
                                f"{study.trials[-1].user_attrs.get('error', '?')}")
            trial = study.ask(distributions)
            elapsed = time.perf_counter() - start
            left = self.tune.trials - finished
            eta = (f", ETA {_clock(elapsed / done_here * left)} for this worker's share"
                   if done_here else "")
            print(f"trial {finished + 1} of {self.tune.trials} (study trial {trial.number}), "
                  f"{_clock(elapsed)} elapsed{eta}", file=sys.stderr)
            failures = 0 if self.run_trial(study, trial) else failures + 1
            done_here += 1

    def run_trial(self, study, trial) -> bool:
        """One trial as an ordinary run; False if it failed."""
        optuna = _optuna()
        run_dir = trial.user_attrs.get("run_dir") or str(self.folder / f"trial-{trial.number:04d}")
        for key, value in (("run_dir", run_dir), ("host", socket.gethostname()),
                           ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in trial.params.items())
        print(f"trial {trial.number} ({run_dir}): {shown}", file=sys.stderr)
        start = time.perf_counter()
        folder = RunFolder(run_dir)
        try:
            source = f"trial {trial.number}"
            plan = build_plan(build_config(trial_values(self.base, trial.params, run_dir,
                                                        check=False), source), source)
            config = plan.config
            self._report_logged_epochs(study, trial, folder)

            def on_epoch(epoch: int, metrics: dict) -> None:
                trial.report(metrics["overall"], epoch)
                # after the last epoch there is nothing left to save: the trial completes
                if epoch < config.train.epochs and trial.should_prune():
                    raise StopTraining({
                        "type": "pruned", "epoch": epoch, "validation": metrics,
                        "reason": f"pruned by the {self.tune.pruner} pruner of study "
                                  f"{self.name!r} after epoch {epoch}: validation overall "
                                  f"{metrics['overall']:.4f}"})

            dev = train(plan, on_epoch=on_epoch, score_dev=self.tune.score_dev)
        except StopTraining as stop:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            print(f"trial {trial.number}: {stop}", file=sys.stderr)
            return True
        except Exception as e:  # this trial's settings or run failed; the study goes on
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:1000])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"trial {trial.number} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return False
        best = load_state(folder.best, ("metrics",))
        trial.set_user_attr("validation", best["metrics"])
        trial.set_user_attr("epoch", best.get("epoch"))
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        if dev:
            trial.set_user_attr("dev", dev)
        study.tell(trial, best["metrics"]["overall"])
        print(f"trial {trial.number}: validation overall {best['metrics']['overall']:.4f} "
              f"(best: trial {study.best_trial.number}, {study.best_value:.4f})",
              file=sys.stderr)
        return True

    @staticmethod
    def _report_logged_epochs(study, trial, folder) -> None:
        """A resumed trial's epochs that its dead worker had not reported yet."""
        known = study.get_trials(deepcopy=False)[trial.number].intermediate_values
        for record in folder.records("epoch"):
            if "validation" in record and record["epoch"] not in known:
                trial.report(record["validation"]["overall"], record["epoch"])

    # ------------------------------------------------------------------------- results
    def write_results(self, study) -> dict:
        rows = trials_table(study)
        if rows:
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)
            write_text_atomic(self.folder / "trials.csv", text.getvalue())
        complete = [t for t in study.trials if t.value is not None
                    and t.state.name == "COMPLETE"]
        summary = {"trials": len(study.trials),
                   "states": {s: sum(r["state"] == s for r in rows)
                              for s in sorted({r["state"] for r in rows})}}
        if complete:
            best = study.best_trial
            write_text_atomic(self.folder / "best.toml", self.best_toml(best))
            summary.update(best_trial=best.number, best_value=best.value, params=best.params)
        return summary

    def best_toml(self, best) -> str:
        values: dict = {}
        for text in self.overrides:
            keys, value = parse_override(text)
            set_value(values, keys, value, f"override {text!r}")
        for key, value in best.params.items():
            set_value(values, key.split("."), value, key)
        values["run_dir"] = str(self.folder / "best")
        inherit = os.path.relpath(self.config_file.resolve(), self.folder.resolve())
        head = (f"# The best trial of study {self.name!r}: trial {best.number}, validation "
                f"overall {best.value:.4f}\n# (written by `minbert tune`; train it with "
                f"`minbert train --config {self.folder / 'best.toml'}`)\n")
        text = head + to_toml({"inherit": inherit, **values})
        assert tomllib.loads(text) == {"inherit": inherit, **values}, text
        return text


def trials_table(study) -> list[dict]:
    """One row per trial: number, state, validation overall, parameters, timing."""
    rows = []
    for t in study.trials:
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start else None)
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     "validation_overall": t.value,
                     **{f"param {k}": v for k, v in t.params.items()},
                     "epochs_reported": len(t.intermediate_values),
                     "seconds": round(seconds, 1) if seconds is not None else None,
                     "retry_of": t.system_attrs.get("failed_trial"),
                     "run_dir": t.user_attrs.get("run_dir", ""),
                     "error": t.user_attrs.get("error", "")})
    return rows


def to_toml(values: dict) -> str:
    """Nested dicts of scalars as TOML: scalars first, then [section] tables."""
    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def key(k):
        return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)

    lines = []

    def walk(table: dict, path: list):
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if path and scalars:
            lines.append(f"\n[{'.'.join(key(p) for p in path)}]")
        lines.extend(f"{key(k)} = {scalar(v)}" for k, v in scalars.items())
        for k, v in table.items():
            if isinstance(v, dict):
                walk(v, [*path, k])

    walk(values, [])
    return "\n".join(lines) + "\n"


def is_study(folder: str | Path) -> bool:
    return (Path(folder) / "study.json").is_file()


def load_study(folder: str | Path, storage: str | None = None):
    """The Optuna study a study folder describes (`storage` when its URL had a password)."""
    optuna = _optuna()
    folder = Path(folder)
    try:
        record = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TuneError(f"{folder / 'study.json'}: not a study record ({e})") from None
    url = storage or ("" if record["storage"] == "study.db" else record["storage"])
    if "***" in url:
        raise TuneError(f"{folder}: its storage URL's password is not stored; give the URL "
                        "with --storage")
    try:
        return optuna.load_study(study_name=record["study_name"],
                                 storage=_storage(url, folder))
    except KeyError:
        raise TuneError(f"{folder}: study {record['study_name']!r} is not in its storage "
                        f"{_shown(url) or folder / 'study.db'}") from None
