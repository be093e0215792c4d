"""How well each encoder layer's sentence vectors score STS by cosine alone, for trained runs
and the pretrained checkpoint they started from: what training on other tasks does to the
geometry a cosine head reads.

For every run (and the pretrained encoder) and every layer L, each STS dev sentence is the
mean of layer L's token states; the printed figure is Pearson's r between the cosine of
the two sentences' vectors and the gold score (no head, no training on the figure itself).

    python benchmarks/sts_geometry.py runs/lean-multi/seed-0 \
        runs/lean-spec/specialist-sts/seed-0 runs/lean-spec/specialist-sst/seed-0
"""
import argparse
import warnings
from dataclasses import replace

import numpy as np
import torch

from minbert.build import encode_split
from minbert.devices import machine_summary
from minbert.loading import load_run
from minbert.model import BertModel
from minbert.tasks import build_tasks


def layer_correlations(encoder, dev, batch_size: int = 64) -> list[float]:
    """Pearson's r of cosine and gold score for each layer's mean-pooled vectors."""
    layers = encoder.config.num_hidden_layers
    cosines = np.zeros((layers, len(dev)))
    encoder.eval()
    with torch.inference_mode():
        for indices in dev.sorted_batches(batch_size):
            batch = dev.batch(indices)
            vectors = []
            for segment in batch.segments:
                _, _, states = encoder(input_ids=segment["input_ids"],
                                       attention_mask=segment["attention_mask"],
                                       token_type_ids=segment["token_type_ids"],
                                       output_hidden_states=True)
                mask = segment["attention_mask"].unsqueeze(-1).float()
                vectors.append([(h * mask).sum(1) / mask.sum(1) for h in states[1:]])
            for layer in range(layers):
                cosines[layer, np.asarray(indices)] = torch.nn.functional.cosine_similarity(
                    vectors[0][layer], vectors[1][layer], dim=-1).double().numpy()
    labels = np.asarray(dev.examples.labels, dtype=np.float64)
    return [float(np.corrcoef(c, labels)[0, 1]) for c in cosines]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders holding the STS task, or others "
                                                "(their encoder is read with the first's data)")
    parser.add_argument("--task", default="sts")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    first = load_run(args.runs[0])
    config = first.config
    # the task alone, each sentence encoded by itself (whatever the first run did)
    options = {**config.tasks.get(args.task, {}), "pair_encoding": "bi"}
    config = replace(config, data=replace(config.data, tasks=[args.task]),
                     tasks={**config.tasks, args.task: options})
    tasks = build_tasks(config)
    dev = encode_split(config, {args.task: tasks[args.task]}, first.tokenizer, "dev")[args.task]
    print(f"machine: {machine_summary()}; {len(dev)} {args.task} dev pairs, fp32, "
          "mean pooling of each layer\n")
    encoders = {f"pretrained ({config.model.checkpoint})":
                BertModel.from_pretrained(config.model.checkpoint, verbose=False)}
    for run in args.runs:
        model = first.model if run == args.runs[0] else load_run(run).model  # first read once
        encoder = model.encoder
        if args.task in model.task_layers:  # the task reads its own top layers (own_layers)
            encoder.load_state_dict(model.encoder_state(args.task))
        encoders[run] = encoder
    layers = first.model.encoder.config.num_hidden_layers
    print(f"{'encoder':<48}" + "".join(f"{'L' + str(k + 1):>8}" for k in range(layers)))
    for name, encoder in encoders.items():
        print(f"{name:<48}" + "".join(f"{r:>8.4f}" for r in layer_correlations(encoder, dev)),
              flush=True)


if __name__ == "__main__":
    main()
