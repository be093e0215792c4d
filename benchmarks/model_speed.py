"""Inference and training-step throughput of minbert's BertModel against transformers.BertModel.

Same weights (MiniLM-L6 by default), same batch, same lengths, same process; prints
sequences/s for both and the ratio ours / theirs, in fp32 and under bf16 autocast (fp32
weights, as training runs it), then bf16 against fp32 for ours, and on a CPU our training
step with its cheaper dropout masks against torch's dropout. CPU unless --device says
otherwise.

    python benchmarks/model_speed.py [--model minilm-l6] [--batch 32] [--seq 64] [--steps 10]
"""
import argparse
import time

import torch


def make_batch(vocab_size: int, batch: int, seq: int, generator: torch.Generator):
    ids = torch.randint(1000, vocab_size, (batch, seq), generator=generator)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=generator)
    lengths[0] = seq
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask,
            "token_type_ids": torch.zeros_like(ids)}


def first_output(out):
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def throughput(model, batch, steps: int, train: bool, dtype=None) -> float:
    """Sequences per second over `steps` timed calls after two warm-up calls; `dtype`
    bf16 runs the forward under autocast."""
    model.train(train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if train else None
    device = next(model.parameters()).device.type

    def step():
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            if train:
                first_output(model(**batch)).float().pow(2).mean().backward()
            else:
                with torch.inference_mode():
                    model(**batch)
        if train:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch["input_ids"].shape[0] / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import transformers
    from minbert import BertModel
    from minbert.devices import machine_summary
    from minbert.pretrained import resolve_checkpoint

    ours = BertModel.from_pretrained(args.model).to(args.device)
    theirs = transformers.BertModel.from_pretrained(
        str(resolve_checkpoint(args.model)), attn_implementation="sdpa").to(args.device)
    generator = torch.Generator().manual_seed(0)
    batch = {k: v.to(args.device) for k, v in
             make_batch(ours.config.vocab_size, args.batch, args.seq, generator).items()}

    print(f"machine: {machine_summary()}; device {args.device}")
    print(f"model {args.model}, batch {args.batch}, max length {args.seq} (lengths vary), "
          f"{args.steps} timed steps\n")
    print(f"{'mode':<10}{'precision':<10}{'minbert seq/s':>15}{'HF seq/s':>12}{'ratio':>8}")
    ours_by_precision = {}
    for mode, train in (("inference", False), ("training", True)):
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            # interleave the two so that thermal or background drift hits both alike
            mine, ref = [], []
            for _ in range(2):
                mine.append(throughput(ours, batch, args.steps, train, dtype))
                ref.append(throughput(theirs, batch, args.steps, train, dtype))
            ours_by_precision[mode, precision] = max(mine)
            print(f"{mode:<10}{precision:<10}{max(mine):>15.1f}{max(ref):>12.1f}"
                  f"{max(mine) / max(ref):>7.2f}x")
    for mode in ("inference", "training"):
        ratio = ours_by_precision[mode, "bf16"] / ours_by_precision[mode, "fp32"]
        print(f"minbert {mode}: bf16 / fp32 = {ratio:.2f}x")
    if args.device == "cpu":  # the cheaper dropout masks against torch's, in one process
        from minbert import model as model_module
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            speeds = {True: [], False: []}
            for _ in range(2):
                for cheap in (True, False):
                    model_module.CHEAP_CPU_DROPOUT = cheap
                    speeds[cheap].append(throughput(ours, batch, args.steps, True, dtype))
            model_module.CHEAP_CPU_DROPOUT = True
            print(f"minbert training {precision}: cheap dropout masks {max(speeds[True]):.1f} "
                  f"seq/s, torch's {max(speeds[False]):.1f} seq/s = "
                  f"{max(speeds[True]) / max(speeds[False]):.2f}x")


if __name__ == "__main__":
    main()
