"""Many seeded runs on one GPU, several at a time: the evidence runs of docs/results.md
("SMART and its cheaper settings, three seeds each, on a GPU").

One small model (all-MiniLM-L6-v2, batch 32) leaves a big GPU mostly idle, waiting for
Python to launch kernels, so several training processes share it: each job is an ordinary
`minbert train --seeds K` into RUN_ROOT/NAME/seed-K (locked, resumable), started in the
order of JOBS (the recipes that matter most first), at most --workers at a time. No job
starts after --start-by seconds; jobs still running at --stop-at are stopped (their run
folders resume). Then `minbert train --seeds 0,1,2` over the same folders writes each
recipe's seeds.json, and `minbert compare NAME plain` reads them.

    python benchmarks/gpu_seeds.py --run-root runs/gpu --workers 8
    python benchmarks/gpu_seeds.py --run-root runs/gpu --only plain,smart --seeds 0 \\
        --device cpu --extra train.max_steps=4 data.dev_limit=64        # smoke, on a CPU

Extra overrides (--extra) go to every job: a local data folder (data.dir=...), a local
checkpoint (model.checkpoint=...).
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

NO_SMART = "smart.enabled=false"
# name -> (config, overrides); the order is the order of starting
JOBS = {
    "smart": ("configs/best-cpu.toml", []),
    "plain": ("configs/best-cpu.toml", [NO_SMART]),
    "share25": ("configs/best-cpu.toml", ["smart.adversarial_share=0.25"]),
    "rdrop": ("configs/best-cpu.toml", ["smart.adversarial_steps=0", "smart.noise_std=0.0",
                                        "smart.detach_target=false",
                                        "smart.proximal_weight=0.0"]),
    "nodropout": ("configs/best-cpu.toml", ["smart.adversarial_dropout=false"]),
    "share10": ("configs/best-cpu.toml", ["smart.adversarial_share=0.1"]),
    "attached": ("configs/best-cpu.toml", ["smart.detach_target=false"]),
    "r3f": ("configs/best-cpu.toml", ["smart.adversarial_steps=0"]),
    "every4": ("configs/best-cpu.toml", ["smart.adversarial_every=4"]),
    "smart-3ep": ("configs/best-cpu.toml", ["train.epochs=3"]),
    "plain-3ep": ("configs/best-cpu.toml", ["train.epochs=3", NO_SMART]),
    # combiners and quality levers on the recipe without SMART ("plain"), and the quick preset
    "nosmart-cagrad": ("configs/best-cpu.toml", [NO_SMART, 'train.combiner="cagrad"']),
    "nosmart-famo": ("configs/best-cpu.toml", [NO_SMART, 'train.combiner="famo"']),
    "nosmart-sum": ("configs/best-cpu.toml", [NO_SMART, 'train.combiner="sum"']),
    "nosmart-stsboth": ("configs/best-cpu.toml", [NO_SMART, 'tasks.sts.pair_encoding="both"']),
    "nosmart-sstpool4": ("configs/best-cpu.toml", [NO_SMART, "tasks.sst.pool_layers=4"]),
    "nosmart-quora25": ("configs/best-cpu.toml", [NO_SMART, "tasks.quora.subsample=0.25"]),
    "nosmart-quora50": ("configs/best-cpu.toml", [NO_SMART, "tasks.quora.subsample=0.5"]),
    "nosmart-avg2": ("configs/best-cpu.toml", [NO_SMART, "train.average_last=2"]),
    "quick": ("configs/quick.toml", []),
    "quick-prop": ("configs/quick.toml", ['train.sampler="proportional"']),
}


def run_jobs(jobs: list[tuple[str, list[str], Path]], workers: int, env: dict,
             start_by: float = float("inf"), stop_at: float = float("inf"),
             start: float | None = None) -> tuple[list[str], list[str]]:
    """Runs each (label, command, log file) of `jobs` in order, at most `workers` at a time;
    none starts after `start_by` seconds, and those still running at `stop_at` are stopped
    (a run folder resumes). Seconds count from `start` (default: now). Returns the labels
    that finished and those that failed; two failures before any success stop the rest."""
    queue = list(jobs)
    running, failed, done = {}, [], []
    start = time.monotonic() if start is None else start

    def clock():
        return f"{time.monotonic() - start:6.0f} s"

    while queue or running:
        for label, (proc, log, began) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[label]
            took = time.monotonic() - began
            (done if proc.returncode == 0 else failed).append(label)
            print(f"{clock()}  end   {label}: rc {proc.returncode}, {took:.0f} s", flush=True)
            if proc.returncode:
                print("".join(Path(log).read_text().splitlines(True)[-15:]), flush=True)
        if failed and not done and len(failed) >= 2:
            print("two jobs failed and none finished: stopping", flush=True)
            queue = []
            stop_at = 0.0  # stop the running ones below
        elapsed = time.monotonic() - start
        while queue and len(running) < workers and elapsed < start_by:
            label, cmd, log = queue.pop(0)
            running[label] = (subprocess.Popen(cmd, stdout=open(log, "w"),
                                               stderr=subprocess.STDOUT, env=env),
                              log, time.monotonic())
            print(f"{clock()}  start {label}", flush=True)
        if elapsed >= start_by and queue:
            print(f"{clock()}  not started (time): {[job[0] for job in queue]}", flush=True)
            queue = []
        if elapsed >= stop_at:
            for label, (proc, _, _) in running.items():
                proc.terminate()
                print(f"{clock()}  stopped {label} (time)", flush=True)
            for proc, _, _ in running.values():
                proc.wait()
            break
        time.sleep(1)
    return done, failed


def job_env(threads: int) -> dict:
    """The environment of each job: `threads` CPU threads, unbuffered output."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-root", default="runs/gpu")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", help="comma-separated job names (default: all, in order)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per job")
    parser.add_argument("--start-by", type=float, default=330.0)
    parser.add_argument("--stop-at", type=float, default=500.0)
    parser.add_argument("--extra", nargs="*", default=[])
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(JOBS)
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        raise SystemExit(f"--only: unknown job(s) {unknown}; known: {', '.join(JOBS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.run_root)
    root.mkdir(parents=True, exist_ok=True)
    common = [f'train.device="{args.device}"', *args.extra]
    jobs = [(f"{name} seed {seed}",
             [sys.executable, "-m", "minbert", "train", "--config", JOBS[name][0],
              "--run-dir", str(root / name), "--seeds", str(seed), *common, *JOBS[name][1]],
             root / f"{name}-seed-{seed}.log")
            for name in names for seed in seeds]
    done, failed = run_jobs(jobs, args.workers, job_env(args.threads), args.start_by,
                            args.stop_at)
    print(f"finished: {len(done)} runs; failed: {failed}", flush=True)
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
