"""Can SMART's perturbed passes run in bf16? The effect of a perturbation δ of size ε on
the logits, f(x + δ) − f(x), in fp32 against bf16 autocast, for ε from SMART's 1e-5 up to
the scale of the word embeddings themselves.

Dropout off (the model in eval mode), so the difference is δ's alone; δ = ε·sign(g) on
every real token with g a fixed Gaussian direction (an ℓ∞ ascent step's shape). For each
ε: the size of the fp32 effect, the bf16 one, and how far bf16's is from fp32's (relative
error; cosine of the two). bf16 can carry the term where that error is small.

    python benchmarks/smart_precision.py [--task sst] [--batch 32]
"""
import argparse

import torch

from _common import model_and_batches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    config, tasks, model, batches = model_and_batches(per_task=args.batch)
    model.eval()
    batch = batches[args.task]
    with torch.no_grad():
        embeds = model.embed(batch)
        masks = [seg["attention_mask"].unsqueeze(-1).float() for seg in batch.segments]
        real = torch.cat([e[m.expand_as(e) > 0] for e, m in zip(embeds, masks)])
        print(f"{config.model.checkpoint}, task {args.task}, batch {args.batch}; word "
              f"embeddings: RMS {real.pow(2).mean().sqrt():.3g}, mean |x| "
              f"{real.abs().mean():.3g}, bf16 spacing at that size ~"
              f"{real.abs().mean() * 2 ** -8:.2g}\n")
        generator = torch.Generator().manual_seed(0)
        signs = [torch.randn(e.shape, generator=generator).sign() * m
                 for e, m in zip(embeds, masks)]

        def logits(eps, bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(batch, [e + eps * s for e, s in zip(embeds, signs)]).float()

        clean = {bf16: logits(0.0, bf16) for bf16 in (False, True)}
        print(f"{'epsilon':>9}{'|Δ| fp32':>12}{'|Δ| bf16':>12}{'rel. error':>12}{'cosine':>9}")
        for eps in (1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2):
            d32 = logits(eps, False) - clean[False]
            d16 = logits(eps, True) - clean[True]
            error = (d16 - d32).norm() / d32.norm()
            cosine = torch.nn.functional.cosine_similarity(d16.flatten(), d32.flatten(), 0)
            print(f"{eps:>9.0e}{d32.norm() / d32.numel() ** .5:>12.2e}"
                  f"{d16.norm() / d16.numel() ** .5:>12.2e}{error:>12.2f}{cosine:>9.3f}")


if __name__ == "__main__":
    main()
