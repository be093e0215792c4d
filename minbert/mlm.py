"""Continued masked-language-model pretraining, `minbert pretrain`: the encoder reads the
tasks' own sentences (any split's text, never a label) and/or any text files before it is
fine-tuned on them (Gururangan et al. 2020, "Don't Stop Pretraining").

BERT's recipe: each batch masks a seeded `mask_prob` share of the real tokens ([CLS],
[SEP] and padding are never chosen); of those, 80% become [MASK], 10% a random token, 10%
stay; the loss is the cross-entropy of the masked positions only, through an MLM head
whose output matrix is the word embeddings (tied, as BERT's is). The head is BERT's own
when the checkpoint has one (`cls.predictions.*`, e.g. bert-base-uncased), else new.

The run folder (pretrain.run_dir) works like a training run's: locked, resumable from
checkpoint.pt to the same weights as an uninterrupted run, a log.jsonl with the MLM loss
and held-out accuracy per epoch; at the end RUN_DIR/model is an HF-format folder
(config.json, model.safetensors with the encoder and the MLM head, the tokenizer files)
that `model.checkpoint = "RUN_DIR/model"` fine-tunes and transformers' BertForMaskedLM
loads.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from minbert.config import RunConfig, flatten
from minbert.data import DataError
from minbert.devices import measured_shape, resolve_device, resolve_precision
from minbert.model import ACTIVATIONS, BertModel
from minbert.optim import adamw, linear_schedule, param_groups
from minbert.progress import Progress
from minbert.pretrained import load_state_dict, resolve_checkpoint
from minbert.runs import RunError, RunFolder, load_state, save_state, write_text_atomic
from minbert.tasks import build_tasks, read_split
from minbert.tokenizer import Tokenizer, pad_batch

IGNORE = -100
# settings a stopped pretraining may resume under with other values
RESUMABLE = {"pretrain.run_dir", "pretrain.max_steps", "pretrain.checkpoint_every",
             "pretrain.log_every", "pretrain.device", "data.dir"}


class MaskedLMHead(nn.Module):
    """BERT's MLM head (HF names under cls.predictions): dense + activation + LayerNorm,
    then scores against the word embeddings (tied) plus a bias per vocabulary entry."""

    def __init__(self, encoder: BertModel):
        super().__init__()
        config = encoder.config
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.activation = ACTIVATIONS[config.hidden_act]
        nn.init.normal_(self.transform.dense.weight, std=0.02)
        nn.init.zeros_(self.transform.dense.bias)
        self.embeddings = [encoder.embeddings.word_embeddings]  # tied; not a submodule

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.transform.LayerNorm(self.activation(self.transform.dense(hidden)))
        return hidden @ self.embeddings[0].weight.t() + self.bias

    def load_hf(self, state: dict[str, torch.Tensor]) -> bool:
        """Loads cls.predictions.* from an HF state dict; False when it has none."""
        prefix = "cls.predictions."
        mine = {}
        for key, tensor in state.items():
            if not key.startswith(prefix) or key.startswith(prefix + "decoder."):
                continue  # the decoder is the (tied) word embeddings and the same bias
            key = key[len(prefix):].replace(".gamma", ".weight").replace(".beta", ".bias")
            mine[key] = tensor
        if not mine:
            return False
        missing, unexpected = self.load_state_dict(mine, strict=False)
        if missing or unexpected:
            raise RunError(f"the checkpoint's MLM head does not fit: missing {missing}, "
                           f"unexpected {unexpected}")
        return True

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"cls.predictions.{k}": v.detach().contiguous()
                for k, v in self.state_dict().items()}


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: list[int],
                mask_id: int, vocab_size: int, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels): `probability` of the real, non-special tokens chosen (at least one
    per batch); of those 80% -> [MASK], 10% -> a random token, 10% kept; labels are the
    original ids there and IGNORE elsewhere."""
    eligible = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special))
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & eligible
    if not chosen.any() and eligible.any():  # a batch of short texts: still one to predict
        where = eligible.flatten().nonzero().squeeze(1)
        pick = where[torch.randint(len(where), (1,), generator=generator)]
        chosen = chosen.flatten().index_fill(0, pick, True).view_as(chosen)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs = input_ids.clone()
    inputs[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = torch.randint(vocab_size, input_ids.shape, generator=generator)[swap]
    return inputs, labels


def read_texts(config: RunConfig) -> tuple[list[str], dict[str, int]]:
    """The texts to pretrain on, each once (first seen first): every text column of the
    configured tasks' files of pretrain.task_splits, then pretrain.text_files (one text a
    line; blank lines skipped). Returns them and a count per source."""
    texts, counts = {}, {}
    tasks = build_tasks(config)
    for split in config.pretrain.task_splits:
        for name, task in tasks.items():
            if split == "train":
                files = [Path(config.data.dir) / f for f in task.train_files]
                parts = [task.read(f) for f in files]
            else:  # a dev or test file this copy of the data lacks is left out, and said
                file = task.dev_file if split == "dev" else task.test_file
                if file and not (Path(config.data.dir) / file).is_file():
                    warnings.warn(f"pretrain: {Path(config.data.dir) / file} not found; "
                                  f"{name}'s {split} texts are left out", stacklevel=2)
                    continue
                examples = read_split(config, task, split, labelled=False)
                parts = [examples] if examples is not None else []
            before = len(texts)
            for examples in parts:
                for column in examples.texts:
                    texts.update(dict.fromkeys(t.strip() for t in column if t.strip()))
            counts[f"{name}-{split}"] = len(texts) - before
    for file in config.pretrain.text_files:
        path = Path(file) if Path(file).is_absolute() else Path(config.data.dir) / file
        if not path.is_file():
            raise DataError(f"pretrain.text_files: {path}: no such file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            line = path.read_bytes()[:e.start].count(b"\n") + 1
            raise DataError(f"{path}, line {line}: not UTF-8 text ({e.reason})") from None
        before = len(texts)
        texts.update(dict.fromkeys(t.strip() for t in lines if t.strip()))
        counts[str(path)] = len(texts) - before
    if not texts:
        raise DataError("pretrain: no text to train on; set pretrain.task_splits or "
                        "pretrain.text_files")
    return list(texts), counts


class Pretrainer:
    def __init__(self, config: RunConfig, overwrite: bool = False):
        self.config, self.settings = config, config.pretrain
        self.folder = RunFolder(self.settings.run_dir)
        self.overwrite = overwrite
        self.device = resolve_device(self.settings.device, "pretrain.device")

    # ------------------------------------------------------------------ set-up
    def saved_settings(self) -> dict:
        """What decides the result: the pretrain section, the texts' sources, the start."""
        flat = flatten(self.config.to_dict())
        keep = {k: v for k, v in flat.items()
                if k.startswith("pretrain.") or k in ("data.tasks", "tasks")}
        keep["start"] = self.settings.checkpoint or self.config.model.checkpoint
        return keep

    def claim(self) -> bool:
        """Locks the folder; True to resume from its checkpoint. A folder of another
        pretraining (settings differ) is refused, unless overwrite."""
        start = Path(self.settings.checkpoint or self.config.model.checkpoint).resolve()
        if start == self.folder.path.resolve() or self.folder.path.resolve() in start.parents:
            raise RunError(f"model.checkpoint {self.config.model.checkpoint} is this "
                           "pretraining's own output (fine-tuning config?); set "
                           "pretrain.checkpoint to the model it starts from")
        self.folder.lock()
        try:
            return self._check_folder()
        except BaseException:
            self.folder.unlock()
            raise

    def _check_folder(self) -> bool:
        saved_file = self.folder.path / "pretrain.json"
        if not saved_file.is_file() and (self.folder.config_file.is_file()
                                          or self.folder.is_evaluation()):
            raise RunError(f"{self.folder.path} holds a training run or an evaluation, not a "
                           "pretraining; give pretrain.run_dir a folder of its own")
        if self.overwrite:
            self._clear()
        elif saved_file.is_file():
            try:
                saved = json.loads(saved_file.read_text(encoding="utf-8"))
            except (ValueError, RecursionError) as e:
                raise RunError(f"{saved_file}: not a pretraining record ({e})") from None
            if not isinstance(saved, dict):
                raise RunError(f"{saved_file}: not a pretraining record (a "
                               f"{type(saved).__name__}, not a table)")
            mine = self.saved_settings()
            changes = [f"{k}: {saved.get(k)!r} -> {mine.get(k)!r}"
                       for k in sorted(set(saved) | set(mine))
                       if saved.get(k) != mine.get(k) and k not in RESUMABLE]
            if changes:
                raise RunError(f"{self.folder.path} holds a pretraining with other settings "
                               f"({', '.join(changes)}); use another pretrain.run_dir, the "
                               "same settings, or --overwrite")
            if self.folder.checkpoint.is_file():
                return True
            if (self.folder.path / "model" / "model.safetensors").is_file():
                return True  # finished: resume() sees it is done
            self._clear()
        write_text_atomic(saved_file, json.dumps(self.saved_settings(), indent=2) + "\n")
        return False

    def _clear(self):
        self.folder.clear()
        (self.folder.path / "pretrain.json").unlink(missing_ok=True)
        shutil.rmtree(self.folder.path / "model", ignore_errors=True)

    def build(self):
        start = self.settings.checkpoint or self.config.model.checkpoint
        self.source = resolve_checkpoint(start)
        torch.manual_seed(self.settings.seed)  # a new head's weights, then dropout: seeded
        self.encoder = BertModel.from_pretrained(self.source, verbose=False)
        self.tokenizer = Tokenizer.from_pretrained(self.source, self.settings.max_length)
        self.head = MaskedLMHead(self.encoder)
        state, _ = load_state_dict(self.source)
        self.head_loaded = self.head.load_hf(state)
        vocab = self.tokenizer.backend.get_vocab()
        if "[MASK]" not in vocab:
            raise RunError(f"{self.source}: its vocabulary has no [MASK] token")
        self.mask_id = vocab["[MASK]"]
        self.special = sorted({vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]",
                                                  "[MASK]") if t in vocab})
        texts, self.counts = read_texts(self.config)
        order = random.Random(self.settings.seed).sample(range(len(texts)), len(texts))
        held = int(round(self.settings.held_out * len(texts)))
        held = min(held, len(texts) - 1)
        encoded = self.tokenizer.encode_ids(texts)
        self.validation = [encoded[i] for i in sorted(order[:held])]
        self.train_set = [encoded[i] for i in sorted(order[held:])]
        self.encoder.to(self.device).train()
        self.head.to(self.device)
        self.autocast, self.precision = resolve_precision(
            self.settings.precision, self.device, self.encoder,
            measured_shape(self.settings.batch_size, self.settings.max_length))
        modules = nn.ModuleDict({"encoder": self.encoder, "mlm": self.head})
        self.optimizer = adamw(param_groups(modules, self.settings.lr), self.settings.lr,
                               self.settings.weight_decay, self.device)
        self.steps_per_epoch = math.ceil(len(self.train_set) / self.settings.batch_size)
        total = self.steps_per_epoch * self.settings.epochs
        self.scheduler = linear_schedule(self.optimizer, int(self.settings.warmup * total),
                                         total)
        self.epoch = self.step = self.updates = 0

    def batches(self, epoch: int) -> list[list[int]]:
        """Length-bucketed batches in a seeded order (the same on resume)."""
        rng = np.random.default_rng([self.settings.seed, epoch])
        order = rng.permutation(len(self.train_set))
        size, chunk = self.settings.batch_size, self.settings.batch_size * 50
        batches = []
        for start in range(0, len(order), chunk):  # sort by length within chunks
            part = sorted(order[start:start + chunk], key=lambda i: len(self.train_set[i][0]))
            batches += [part[i:i + size] for i in range(0, len(part), size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def masked(self, rows: list, seed_parts: tuple):
        batch = pad_batch(rows, self.tokenizer.pad_id)
        # one stream per (seed, epoch, step): the same masks after a resume
        stream = np.random.SeedSequence([seed_parts[0], seed_parts[1] + 1, seed_parts[2]])
        generator = torch.Generator().manual_seed(int(stream.generate_state(1)[0]))
        inputs, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], self.special,
                                     self.mask_id, self.tokenizer.vocab_size,
                                     self.settings.mask_prob, generator)
        return ({"input_ids": inputs.to(self.device),
                 "attention_mask": batch["attention_mask"].to(self.device),
                 "token_type_ids": batch["token_type_ids"].to(self.device)},
                labels.to(self.device))

    def loss(self, inputs, labels) -> tuple[torch.Tensor, int, int]:
        """Cross-entropy over the masked positions (the head runs on those only)."""
        with torch.autocast(self.device.type, dtype=self.autocast,
                            enabled=self.autocast is not None):
            hidden, _ = self.encoder(**inputs)
            where = labels != IGNORE
            logits = self.head(hidden[where]).float()
        target = labels[where]
        if target.numel() == 0:
            return logits.sum() * 0.0, 0, 0
        correct = int((logits.argmax(-1) == target).sum())
        return nn.functional.cross_entropy(logits, target), correct, int(target.numel())

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        resuming = self.claim()
        try:
            model_dir = self.folder.path / "model"
            if resuming and (model_dir / "model.safetensors").is_file() \
                    and not self.folder.checkpoint.is_file():
                return model_dir  # finished before
            self.build()
            if resuming:
                self.resume()
            else:
                self.log({"type": "start", "texts": self.counts,
                          "train_texts": len(self.train_set),
                          "held_out_texts": len(self.validation),
                          "start": str(self.source), "mlm_head": "loaded" if self.head_loaded
                          else "new", "device": str(self.device), "precision": self.precision})
            tqdm.write(f"pretrain: {len(self.train_set):,} training texts and "
                       f"{len(self.validation):,} held out; from {self.source}, MLM head "
                       f"{'loaded' if self.head_loaded else 'new'}; device {self.device}, "
                       f"precision {self.precision}")
            if self.epoch == 0 and self.step == 0 and not resuming:
                self.log({"type": "epoch", "epoch": 0, **self.evaluate()})
            while self.epoch < self.settings.epochs:
                if not self.train_epoch():
                    return self.folder.path  # stopped at pretrain.max_steps
            self.write_model(model_dir)
            self.folder.checkpoint.unlink(missing_ok=True)
            return model_dir
        finally:
            self.folder.unlock()

    def train_epoch(self) -> bool:
        s = self.settings
        plan = self.batches(self.epoch)
        progress = Progress(len(plan), f"pretrain epoch {self.epoch + 1}", initial=self.step)
        window, start = [], time.perf_counter()
        while self.step < len(plan):
            rows = [self.train_set[i] for i in plan[self.step]]
            inputs, labels = self.masked(rows, (s.seed, self.epoch, self.step))
            loss, _, _ = self.loss(inputs, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*self.encoder.parameters(),
                                            *self.head.parameters()], 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.updates += 1
            window.append(loss.item())
            progress.update(1)
            if self.updates % s.log_every == 0:
                self.log({"type": "step", "epoch": self.epoch + 1, "updates": self.updates,
                          "loss": float(np.mean(window)), "lr": self.scheduler.get_last_lr()[0],
                          "seconds": round(time.perf_counter() - start, 2)})
                window, start = [], time.perf_counter()
            if self.updates % s.checkpoint_every == 0:
                self.save_checkpoint()
            if s.max_steps and self.updates >= s.max_steps and self.step < len(plan):
                progress.close()
                self.save_checkpoint()
                return False
        progress.close()
        self.epoch, self.step = self.epoch + 1, 0
        record = {"type": "epoch", "epoch": self.epoch, "updates": self.updates,
                  **self.evaluate()}
        self.log(record)
        if "mlm_loss" in record:
            tqdm.write(f"pretrain epoch {self.epoch}: held-out MLM loss "
                       f"{record['mlm_loss']:.3f}, accuracy {record['mlm_accuracy']:.3f}")
        self.save_checkpoint()
        if s.max_steps and self.updates >= s.max_steps and self.epoch < s.epochs:
            return False
        return True

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out MLM loss and accuracy, with a fixed masking (the same every epoch)."""
        if not self.validation:  # pretrain.held_out = 0
            return {}
        was = self.encoder.training
        self.encoder.eval()
        total = correct = count = 0.0
        size = self.settings.batch_size
        for start in range(0, len(self.validation), size):
            inputs, labels = self.masked(self.validation[start:start + size],
                                         (self.settings.seed, -1, start))
            loss, right, n = self.loss(inputs, labels)
            total += float(loss) * n
            correct += right
            count += n
        self.encoder.train(was)
        return {"mlm_loss": total / max(count, 1), "mlm_accuracy": correct / max(count, 1),
                "masked_tokens": int(count)}

    # ------------------------------------------------------------------ files
    def log(self, record: dict):
        self.folder.append(record)

    def save_checkpoint(self):
        save_state({"encoder": self.encoder.state_dict(), "head": self.head.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                    "step": self.step, "updates": self.updates,
                    "torch_rng": torch.get_rng_state(),
                    "log_bytes": self.folder.log_size()}, self.folder.checkpoint)

    def resume(self):
        state = load_state(self.folder.checkpoint, ("encoder", "head", "optimizer"))
        self.encoder.load_state_dict(state["encoder"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.updates = state["epoch"], state["step"], state["updates"]
        torch.set_rng_state(state["torch_rng"])
        self.folder.truncate_log(state["log_bytes"])  # records after the checkpoint are redone
        self.log({"type": "resume", "epoch": self.epoch, "step": self.step,
                  "updates": self.updates})

    def write_model(self, out: Path):
        """An HF-format folder: config, encoder + MLM head weights, tokenizer files."""
        from safetensors.torch import save_file

        from minbert.export import TOKENIZER_FILES
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = {**self.encoder.config.to_dict(), "architectures": ["BertForMaskedLM"],
                  "model_type": "bert"}
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        weights = {k: v.detach().cpu().contiguous()
                   for k, v in self.encoder.state_dict().items()}
        weights.update({k: v.cpu() for k, v in self.head.hf_state_dict().items()})
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name in TOKENIZER_FILES:
            if (self.source / name).is_file():
                shutil.copy(self.source / name, tmp / name)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        self.log({"type": "final", "model": str(out)})


def pretrain(config: RunConfig, overwrite: bool = False) -> Path:
    """Runs (or resumes) the pretraining a config's [pretrain] section describes; returns
    the HF folder it wrote (or the run folder, when stopped at pretrain.max_steps)."""
    return Pretrainer(config, overwrite).run()
