"""Multi-task training throughput: minbert's trainer against a plain loop over HF transformers.

Same weights, same examples (a slice of each task's training file, pairs cross-encoded),
same batch size, optimizer and heads, in one process. The HF loop runs twice: padded to a
fixed 128 tokens and padded to the longest in each (random) batch. Prints examples/s,
the padding share of each, and the ratios ours / theirs.

    python benchmarks/train_speed.py [--per-task 320] [--batch 32]
"""
import argparse
import tempfile
import time
import warnings

import numpy as np
import torch

from minbert.build import build_plan
from minbert.config import load_config
from minbert.data import EncodedTask
from minbert.devices import machine_summary
from minbert.loading import build_model
from minbert.tasks import build_tasks
from minbert.training import Trainer


def plain_hf_loop(tasks, train_sets, checkpoint_folder, batch_size, fixed_length, seed=0):
    """The skeleton's way: each task's examples in random batches, one optimizer step per
    batch, round-robin over tasks; returns (examples/s, padding share)."""
    import transformers
    torch.manual_seed(seed)
    encoder = transformers.BertModel.from_pretrained(str(checkpoint_folder),
                                                     attn_implementation="sdpa")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(checkpoint_folder))
    heads = torch.nn.ModuleDict({name: torch.nn.Linear(encoder.config.hidden_size,
                                                       task.num_outputs)
                                 for name, task in tasks.items()})
    params = list(encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    encoder.train()
    rng = np.random.default_rng(seed)
    batches = {}
    for name, data in train_sets.items():
        order = rng.permutation(len(data))
        batches[name] = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    padding = dict(padding="max_length", max_length=128) if fixed_length else dict(padding=True)
    real = slots = examples = 0
    start = time.perf_counter()
    for step in range(max(len(b) for b in batches.values())):
        for name, task_batches in batches.items():
            if step >= len(task_batches):
                continue
            indices = task_batches[step]
            texts = [[column[i] for i in indices] for column in train_sets[name].examples.texts]
            inputs = tokenizer(*texts, truncation=True, return_tensors="pt", **padding)
            hidden = encoder(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            logits = heads[name]((hidden * mask).sum(1) / mask.sum(1))
            labels = train_sets[name].labels[torch.as_tensor(indices)]
            tasks[name].loss(logits, labels).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            real += int(inputs["attention_mask"].sum())
            slots += inputs["attention_mask"].numel()
            examples += len(indices)
    return examples / (time.perf_counter() - start), 1 - real / slots


def minbert_trainer(config, tasks, model, train_sets):
    """One epoch of the real trainer's steps (no evaluation); (examples/s, padding share)."""
    trainer = Trainer(build_plan(config), model, train_sets, dev_sets={})
    trainer.model.train()
    window = {"tokens": 0, "slots": 0, "examples": 0, "time": 0.0, "loss": {}}
    start = time.perf_counter()
    for step in trainer._plan(0):
        trainer.train_step(step, window)
        trainer.update()
    elapsed = time.perf_counter() - start
    return window["examples"] / elapsed, 1 - window["tokens"] / window["slots"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-task", type=int, default=320)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--config", default="configs/cross-encoding.toml")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(args.config, [f'run_dir="{run_dir}"', "train.sampler='round-robin'",
                                           f"data.batch_size={args.batch}"])
        tasks = build_tasks(config)
        model, tokenizer = build_model(config, tasks)
        train_sets = {}
        for name, task in tasks.items():
            examples, _ = task.read_train(config.data.dir, seed=0)
            examples = examples.subset(range(min(args.per_task, len(examples))))
            train_sets[name] = EncodedTask(name, examples, tokenizer, model.encodings[name])
        total = sum(len(d) for d in train_sets.values())
        print(f"machine: {machine_summary()}")
        print(f"{config.model.checkpoint}, {len(tasks)} tasks x {args.per_task} examples "
              f"({total}), batch {args.batch}, cross-encoded pairs, full-model fine-tuning\n")
        ours, ours_pad = minbert_trainer(config, tasks, model, train_sets)
        folder = model.encoder.source
        fixed, fixed_pad = plain_hf_loop(tasks, train_sets, folder, args.batch, True)
        dynamic, dynamic_pad = plain_hf_loop(tasks, train_sets, folder, args.batch, False)
    print(f"{'loop':<34}{'examples/s':>11}{'padding':>9}{'ours/it':>9}")
    print(f"{'minbert trainer (length buckets)':<34}{ours:>11.1f}{ours_pad:>9.1%}{1:>8.2f}x")
    print(f"{'HF loop, fixed 128 padding':<34}{fixed:>11.1f}{fixed_pad:>9.1%}"
          f"{ours / fixed:>8.2f}x")
    print(f"{'HF loop, dynamic padding':<34}{dynamic:>11.1f}{dynamic_pad:>9.1%}"
          f"{ours / dynamic:>8.2f}x")


if __name__ == "__main__":
    main()
