"""The multi-task training loop, read top to bottom.

Each step draws one batch of one or more tasks (the sampler decides), computes each task's
loss plus its regularisers' terms, and hands the per-task losses to the combiner, which
sets the gradients. The loop knows neither which combiner nor which regulariser it runs.
Everything a run produces lands in its run folder, whose files minbert/runs.py owns; the
run's parts are built once from its config in minbert/build.py; the loop is here.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from minbert import distributed
from minbert.build import Plan, build_plan, encode_split, encode_train
from minbert.config import RunConfig
from minbert.data import EncodedTask
from minbert.devices import machine_summary, measured_shape, resolve_precision
from minbert.evaluation import evaluate, format_table, overall_score
from minbert.loading import build_model, start_from_run
from minbert.multitask import MultiTaskModel
from minbert.optim import adamw, linear_schedule, param_groups
from minbert.progress import Progress
from minbert.outputs import prediction_file, write_prediction_file
from minbert.runs import RunError, RunFolder, config_changes, load_state, save_state
from minbert.samplers import plan_epoch
from minbert.tensorboard import TensorBoard


class TrainingError(RuntimeError):
    pass


class StopTraining(Exception):
    """Raised by an `on_epoch` callback to end a run after an epoch (a tuner pruning a
    trial): the run's log gets `record`, its checkpoint stays, and the exception goes on."""

    def __init__(self, record: dict):
        super().__init__(record.get("reason", record.get("type", "stopped")))
        self.record = record


def _own_share(saved, tasks) -> dict:
    """This rank's saved training predictions: its own when the number of ranks is the same
    as when saved; otherwise rank 0 takes them all (a dict: an older one-rank checkpoint)."""
    if isinstance(saved, dict):
        saved = [saved]
    if len(saved) == distributed.world_size():
        mine = saved[distributed.rank()]
    elif distributed.rank() > 0:
        return {name: ([], []) for name in tasks}
    else:
        mine = {name: ([p for s in saved for p in s[name][0]],
                       [y for s in saved for y in s[name][1]]) for name in tasks}
    # tensors; numpy arrays in checkpoints written by earlier versions
    return {name: ([torch.as_tensor(p) for p in preds], [torch.as_tensor(y) for y in labels])
            for name, (preds, labels) in mine.items()}


class Trainer:
    """Trains `model` on a plan's tasks with its sampler, combiner and regularisers; the
    run folder (plan.config.run_dir) receives everything it produces."""

    def __init__(self, plan: Plan, model: MultiTaskModel,
                 train_sets: dict[str, EncodedTask], dev_sets: dict[str, EncodedTask],
                 file_counts: dict | None = None,
                 validation_sets: dict[str, EncodedTask] | None = None,
                 on_epoch=None, score_dev: bool = True):
        self.plan, self.config, self.tasks, self.model = plan, plan.config, plan.tasks, model
        # on_epoch(epoch, metrics on the selection split) after each epoch's checkpoint;
        # it may raise StopTraining. score_dev=False: with a validation split, the dev
        # files are not scored at the end (a tuner's trials are judged on validation only)
        self.on_epoch, self.score_dev = on_epoch, score_dev
        self.train_sets, self.dev_sets = train_sets, dev_sets
        # the epoch is chosen on the held-out validation split when there is one (the dev
        # files are then scored once, on the chosen model), else on dev
        self.validation_sets = validation_sets or {}
        self.selection = "validation" if self.validation_sets else "dev"
        self.folder = RunFolder(self.config.run_dir)
        self.run_dir = self.folder.path
        self.device = plan.device
        cfg = self.config.train
        distributed.init_from_env(self.device)
        self.main = distributed.is_main()  # only rank 0 writes the run folder
        self.model.to(self.device)
        # measured on rank 0 (the others would share its cores), the same on every rank
        decision = resolve_precision(cfg.precision, self.device,
                                     self.model.encoder if self.main else None,
                                     measured_shape(self.config.data.batch_size,
                                                    self.config.model.max_length))
        self.autocast, self.precision = distributed.gather_objects(decision)[0]
        distributed.broadcast_parameters(self.model)
        if distributed.active():  # each rank its own dropout masks and SMART noise
            torch.manual_seed(cfg.seed + 1000 * distributed.rank())
        if cfg.compile:
            self.model.encoder.compile(backend=cfg.compile_backend)
        if cfg.mode == "last-linear-layer":
            for p in self.model.encoder.parameters():
                p.requires_grad_(False)
        self.sampler, self.combiner = plan.sampler, plan.combiner
        self.regularizers = plan.regularizers
        # per-task budgets (tasks.X.epochs) make later epochs shorter: count each one
        epoch_steps = [len(self._plan(epoch)) for epoch in range(cfg.epochs)]
        self.steps_per_epoch = epoch_steps[0]
        self.total_updates = sum(math.ceil(n / cfg.grad_accumulation) for n in epoch_steps)
        self.optimizer = adamw(param_groups(self.model, cfg.lr, cfg.head_lr, cfg.layer_decay),
                               cfg.lr, cfg.weight_decay, self.device)
        self.scheduler = linear_schedule(self.optimizer, int(cfg.warmup * self.total_updates),
                                         self.total_updates)
        for regularizer in self.regularizers:
            regularizer.start(self.total_updates)
        self.epoch, self.step, self.updates, self.best = 0, 0, 0, -math.inf
        # train.average_last: the running mean of the last epochs' weights (float tensors)
        self.average, self.averaged_epochs = None, []
        self.train_outputs = {name: ([], []) for name in self.tasks}  # predictions, labels
        self.lr_scales = []  # the lr_scale of each task batch since the last update
        self.file_counts = file_counts or {}
        self.tensorboard = TensorBoard(self.run_dir / "tensorboard", self.selection) \
            if cfg.tensorboard and self.main else None

    def finished(self, epoch: int) -> list[str]:
        """train.keep_finished: the tasks past their epochs, whose weights stay as they are."""
        return [name for name, task in self.tasks.items() if task.epoch_share(epoch) == 0] \
            if self.config.train.keep_finished else []

    def _plan(self, epoch: int):
        return plan_epoch(self.train_sets, self.config.data.batch_size, self.sampler,
                          self.config.train.seed, epoch,
                          {name: task.epoch_share(epoch) for name, task in self.tasks.items()})

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict:
        cfg = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume_if_possible()
        if not resumed and self.main:
            self.folder.write_config(self.config.to_dict())
            described = {r.name: info for r in self.regularizers if (info := r.describe())}
            self.log({"type": "start", "train_examples": {n: len(d) for n, d in
                                                         self.train_sets.items()},
                      "train_files": self.file_counts, "steps_per_epoch": self.steps_per_epoch,
                      "total_updates": self.total_updates, "device": str(self.device),
                      "precision": self.precision, "machine": machine_summary(),
                      **({"regularizers": described} if described else {})})
        if self.main:
            tqdm.write(f"device {self.device}, precision {self.precision}")
        self.model.train()
        while self.epoch < cfg.epochs:
            steps = self._plan(self.epoch)
            for p in self.model.frozen_for(self.finished(self.epoch)):
                p.requires_grad_(False)
            progress = Progress(len(steps), f"epoch {self.epoch + 1}", initial=self.step,
                                enabled=self.main)
            window = {"tokens": 0, "slots": 0, "examples": 0, "time": time.perf_counter(),
                      "loss": {}}
            while self.step < len(steps):
                self.train_step(steps[self.step], window)
                self.step += 1
                boundary = self.step % cfg.grad_accumulation == 0 or self.step == len(steps)
                if boundary:
                    self.update()
                progress.update(1)
                if self.step % cfg.log_every == 0:
                    self.log_window(window, progress)
                if boundary and self.updates % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if boundary and cfg.max_steps and self.updates >= cfg.max_steps:
                    progress.close()
                    self.save_checkpoint()
                    return {"stopped_at_update": self.updates}
            progress.close()
            metrics = self.end_epoch()
            if self.on_epoch is not None:
                try:
                    self.on_epoch(self.epoch, metrics)
                except StopTraining as stop:
                    self.log(stop.record)
                    raise
        distributed.barrier()
        best = self.folder.best
        if not best.exists():
            return {}
        state = load_state(best, ("metrics",))
        if self.selection == "dev":
            if not state.get("final_logged"):  # once: what `--seeds` and compare read
                distributed.barrier()  # every rank has read best.pt before it changes
                self.log({"type": "final", "selected_epoch": state["epoch"],
                          "dev": state["metrics"]})
                self._atomic_save({**state, "final_logged": True}, best)
                self.save_checkpoint()  # its log position includes the final record
            return state["metrics"]
        if not self.score_dev:
            return {}
        return state.get("dev") or self.score_dev_once(state)

    def score_dev_once(self, state: dict) -> dict:
        """The dev files scored on the model chosen on the validation split, once: into
        best.pt, the log (a "final" record) and predictions/."""
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(state["model"])
        metrics, predictions = evaluate(self.model, self.tasks, self.dev_sets,
                                        self.config.data.eval_batch_size, self.device,
                                        self.autocast, progress=self.main)
        self.model.load_state_dict(current)
        self.log({"type": "final", "selected_epoch": state["epoch"],
                  "validation": state["metrics"], "dev": metrics})
        if self.main:
            chosen = (f"the average of epochs {state['averaged_epochs']}"
                      if state.get("averaged_epochs") else f"epoch {state['epoch']}")
            tqdm.write(f"{chosen} chosen on the validation split; its dev scores:\n"
                       + format_table(metrics, self.tasks))
        self.write_dev_predictions(predictions)
        self._atomic_save({**state, "dev": metrics}, self.folder.best)
        self.save_checkpoint()  # its log position now includes the final record
        return metrics

    def write_dev_predictions(self, predictions: dict):
        if self.main:
            self.folder.predictions.mkdir(exist_ok=True)
            for name, values in predictions.items():
                task = self.tasks[name]
                write_prediction_file(prediction_file(self.folder.predictions, task, "dev"),
                                      task, self.dev_sets[name].examples.ids, values)

    def train_step(self, step, window) -> None:
        """Forward every (task, batch) of one step; the combiner does the backward."""
        losses = {}
        for name, indices in step:
            task = self.tasks[name]
            mine = distributed.shard(indices)  # all of them in a single process
            # the mean of the ranks' gradients is the gradient of the whole batch's mean loss
            weight = len(mine) * distributed.world_size() / len(indices)
            # a rank whose share of a short batch is empty still runs one example, weighted
            # 0, so that every rank's backward touches the same parameters
            batch = self.train_sets[name].batch(mine or indices[:1]).to(self.device)
            with torch.autocast(self.device.type, dtype=self.autocast,
                                enabled=self.autocast is not None):
                logits = self.model(batch).float()
                loss = task.loss(logits, batch.labels)
                for regularizer in self.regularizers:
                    loss = loss + regularizer(self.model, task, batch, logits)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"task {name}: the loss is {loss.item()} at epoch {self.epoch + 1}, step "
                    f"{self.step + 1}; stopping. The last good checkpoint is kept in "
                    f"{self.run_dir / 'checkpoint.pt'}; lower train.lr or check the data.")
            self.lr_scales.append(task.lr_scale)
            losses[name] = (loss * task.loss_weight * weight
                            / self.config.train.grad_accumulation)
            if not mine:
                continue
            preds, labels = self.train_outputs[name]
            preds.append(task.predict(logits.detach()).cpu())
            labels.append(batch.labels.cpu())
            real, slots = batch.token_counts()
            window["tokens"] += real
            window["slots"] += slots
            window["examples"] += batch.size
            window["loss"].setdefault(name, []).append(loss.item())
        self.combiner.backward(losses, self.model)

    def update(self):
        # DDP: averages accumulated gradients across ranks. Shared gradients that surgery
        # already averaged are equal on every rank and pass unchanged (one extra collective)
        distributed.all_reduce_grads(self.model.parameters())
        if self.config.train.clip_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.grad is not None],
                self.config.train.clip_norm)
        # tasks.X.lr_scale: this update's step scaled by the mean scale of the tasks whose
        # batches it holds (the schedule's rate is restored before the scheduler moves on)
        scale = sum(self.lr_scales) / len(self.lr_scales) if self.lr_scales else 1.0
        self.lr_scales = []
        if scale != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= scale
        for regularizer in self.regularizers:
            regularizer.before_step(self.model, self.optimizer)
        self.optimizer.step()
        if scale != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] /= scale
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        for regularizer in self.regularizers:
            regularizer.after_step(self.model)

    def end_epoch(self):
        start = time.perf_counter()
        chosen_on = self.validation_sets or self.dev_sets
        metrics, predictions = evaluate(self.model, self.tasks, chosen_on,
                                        self.config.data.eval_batch_size, self.device,
                                        self.autocast, progress=self.main)
        train_metrics = {}
        for name in self.tasks:  # every rank's training predictions
            parts = distributed.gather_objects(self.train_outputs[name])
            preds = [p for rank_preds, _ in parts for p in rank_preds]
            labels = [y for _, rank_labels in parts for y in rank_labels]
            if preds:
                train_metrics[name] = self.tasks[name].metric(torch.cat(preds).numpy(),
                                                              torch.cat(labels).numpy())
        train_metrics["overall"] = overall_score(train_metrics, self.tasks)
        self.log({"type": "epoch", "epoch": self.epoch + 1, "updates": self.updates,
                  "train": train_metrics, self.selection: metrics,
                  "eval_seconds": round(time.perf_counter() - start, 1)})
        if self.main:
            tqdm.write(f"epoch {self.epoch + 1}: train overall "
                       f"{train_metrics['overall']:.3f}\n"
                       + format_table(metrics, self.tasks, self.selection))
        if metrics["overall"] > self.best:
            self.best = metrics["overall"]
            self._atomic_save({"model": self.model.state_dict(), "metrics": metrics,
                               "epoch": self.epoch + 1, "config": self.config.to_dict()},
                              self.folder.best)
            if self.selection == "dev":  # the best model's dev predictions
                self.write_dev_predictions(predictions)
        cfg = self.config.train
        if cfg.average_last and self.epoch + 1 > cfg.epochs - cfg.average_last:
            self.accumulate_average()
            if self.epoch + 1 == cfg.epochs:
                self.score_average(chosen_on)
        self.epoch += 1
        self.step = 0
        self.train_outputs = {name: ([], []) for name in self.tasks}
        self.save_checkpoint()
        return metrics

    def accumulate_average(self):
        weights = {k: v.detach().float() for k, v in self.model.state_dict().items()
                   if v.is_floating_point()}
        if self.average is None:
            self.average = {k: v.clone() for k, v in weights.items()}
        else:
            n = len(self.averaged_epochs) + 1
            for key, value in weights.items():
                self.average[key] += (value - self.average[key]) / n
        self.averaged_epochs.append(self.epoch + 1)

    def score_average(self, chosen_on):
        """The mean of the last epochs' weights as one more candidate: scored on the
        selection split, and kept as best.pt when it beats every epoch."""
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        averaged = {**current, **{k: v.to(current[k].dtype) for k, v in self.average.items()}}
        self.model.load_state_dict(averaged)
        metrics, predictions = evaluate(self.model, self.tasks, chosen_on,
                                        self.config.data.eval_batch_size, self.device,
                                        self.autocast, progress=self.main)
        self.model.load_state_dict(current)
        self.log({"type": "average", "epochs": self.averaged_epochs, self.selection: metrics})
        if self.main:
            tqdm.write(f"average of epochs {self.averaged_epochs}:\n"
                       + format_table(metrics, self.tasks, self.selection))
        if metrics["overall"] > self.best:
            self.best = metrics["overall"]
            self._atomic_save({"model": averaged, "metrics": metrics, "epoch": self.epoch + 1,
                               "averaged_epochs": list(self.averaged_epochs),
                               "config": self.config.to_dict()}, self.folder.best)
            if self.selection == "dev":
                self.write_dev_predictions(predictions)

    # ----------------------------------------------------------------- logging
    def log(self, record: dict):
        if not self.main:
            return
        record = self.folder.append(record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def log_window(self, window, progress):
        elapsed = time.perf_counter() - window["time"]
        losses = {k: float(np.mean(v)) for k, v in window["loss"].items()}
        record = {"type": "step", "epoch": self.epoch + 1, "step": self.step,
                  "updates": self.updates, "lr": self.scheduler.get_last_lr()[0],
                  "loss": losses, "examples_per_s": round(window["examples"] / elapsed, 1),
                  "tokens_per_s": round(window["tokens"] / elapsed, 1),
                  "padding_share": round(1 - window["tokens"] / max(1, window["slots"]), 4)}
        self.log(record)
        progress.set_postfix(loss=f"{sum(losses.values()):.3f}",
                             ex_s=record["examples_per_s"], pad=record["padding_share"])
        window.update(tokens=0, slots=0, examples=0, time=time.perf_counter(), loss={})

    # ----------------------------------------------------------------- checkpoints
    def _atomic_save(self, obj, path):
        """Rank 0 writes the file (atomically: a kill leaves the old one); the others wait."""
        if self.main:
            save_state(obj, path)
        distributed.barrier()

    def save_checkpoint(self):
        rng = distributed.gather_objects(  # every rank's dropout / noise generator
            {"torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
        self._atomic_save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "combiner": self.combiner.state_dict(),
            "regularizers": [r.state_dict() for r in self.regularizers],
            "epoch": self.epoch, "step": self.step, "updates": self.updates, "best": self.best,
            "average": self.average, "averaged_epochs": self.averaged_epochs,
            "train_outputs": distributed.gather_objects(self.train_outputs),  # per rank
            "config": self.config.to_dict(),
            "log_bytes": self.folder.log_size(), "rng": rng,
        }, self.folder.checkpoint)

    def resume_if_possible(self) -> bool:
        path = self.folder.checkpoint
        if not path.exists():
            return False
        state = load_state(path, ("model", "optimizer", "config", "epoch", "rng"),
                           map_location=self.device)
        try:
            self._restore(state)
        except RunError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, IndexError,
                RuntimeError) as e:
            raise RunError(f"{path}: a checkpoint field does not hold what this minbert wrote "
                           f"({type(e).__name__}: {str(e)[:200]}); use another run_dir or "
                           "--overwrite") from None
        if self.epoch >= self.config.train.epochs:  # trained: nothing is resumed
            if self.main:
                tqdm.write(f"{self.run_dir}: already trained ({self.epoch} of "
                           f"{self.config.train.epochs} epochs, {self.updates} updates)")
            return True
        if self.main:
            tqdm.write(f"resuming {path}: epoch {self.epoch + 1}, step {self.step}, "
                       f"{self.updates} updates done")
        self.log({"type": "resume", "epoch": self.epoch + 1, "step": self.step,
                  "device": str(self.device), "precision": self.precision})
        return True

    def _restore(self, state: dict) -> None:
        """Model, optimizer, schedule, methods, counters, RNG and log from a checkpoint."""
        path = self.folder.checkpoint
        changes = config_changes(state["config"], self.config)
        if changes:
            raise RunError(f"{path} was written by a different config ({', '.join(changes)}); "
                           "use another run_dir, the same config, or --overwrite")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.combiner.load_state_dict(state["combiner"])
        for regularizer, reg_state in zip(self.regularizers, state["regularizers"]):
            regularizer.load_state_dict(reg_state)
        self.epoch, self.step, self.updates = state["epoch"], state["step"], state["updates"]
        self.best = state["best"]
        self.average = state.get("average")  # older checkpoints: no average kept
        self.averaged_epochs = state.get("averaged_epochs", [])
        self.train_outputs = _own_share(state["train_outputs"], self.tasks)
        rng = state["rng"]  # a list, one state per rank (a dict in older checkpoints)
        rng = rng if isinstance(rng, dict) else rng[distributed.rank() % len(rng)]
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        if self.main:  # drop what was logged after the checkpoint
            self.folder.truncate_log(state["log_bytes"])


def train(plan: Plan | RunConfig, overwrite: bool = False, on_epoch=None,
          score_dev: bool = True) -> dict:
    """Trains what a plan (or a config, built into one here) names; returns the chosen
    model's dev metrics.

    The run folder is checked first (locked, and a run it already holds is resumed or
    refused), then weights load and data is tokenised. `on_epoch` and `score_dev`: see
    Trainer."""
    plan = plan if isinstance(plan, Plan) else build_plan(plan)
    config = plan.config
    folder = RunFolder(config.run_dir)
    # under torchrun only rank 0 owns (and writes) the folder
    owner = folder.claim(config, overwrite) if distributed.launched_as_main() \
        else contextlib.nullcontext()
    with owner:
        model, tokenizer = build_model(config, plan.tasks)
        if config.model.init_from and not folder.checkpoint.exists():  # else: resumed
            start_from_run(model, config.model.init_from, config.train.seed)
        train_sets, validation_sets, counts = encode_train(config, plan.tasks, tokenizer)
        dev_sets = encode_split(config, plan.tasks, tokenizer, "dev")
        try:
            metrics = Trainer(plan, model, train_sets, dev_sets, counts, validation_sets,
                              on_epoch, score_dev).fit()
            distributed.barrier()  # every rank past its last collective before the group goes
            return metrics
        finally:
            distributed.shutdown()
