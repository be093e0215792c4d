"""What the step-cost benchmarks share: a MiniLM multi-task model and one batch per task."""
import tempfile

import numpy as np
import torch

from minbert.config import load_config
from minbert.data import EncodedTask
from minbert.loading import build_model
from minbert.tasks import build_tasks


def model_and_batches(overrides=(), per_task=32, config="configs/cross-encoding.toml"):
    """(config, tasks, model in train mode, {task: Batch}) over the first examples of each
    task's training file."""
    run_dir = tempfile.mkdtemp()
    config = load_config(config, [f'run_dir="{run_dir}"', *overrides])
    tasks = build_tasks(config)
    model, tokenizer = build_model(config, tasks)
    batches = {}
    for name, task in tasks.items():
        examples, _ = task.read_train(config.data.dir, seed=0)
        examples = examples.subset(range(per_task))
        data = EncodedTask(name, examples, tokenizer, model.encodings[name])
        batches[name] = data.batch(np.arange(per_task))
    torch.manual_seed(0)
    return config, tasks, model.train(), batches
