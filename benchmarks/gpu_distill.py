"""Specialists and the one model distilled from them, for several seeds, in one command on
one GPU: what `minbert train --config C --distill --seeds 0,1,2` trains, with the
independent runs side by side (a small model leaves a big GPU mostly idle).

    python benchmarks/gpu_distill.py --config configs/lean-distill.toml --run-root runs/gpu-distill
    python benchmarks/gpu_distill.py --config configs/lean-distill.toml --run-root runs/smoke \\
        --seeds 0,1 --device cpu --workers 2 --extra train.max_steps=2 data.dev_limit=16  # smoke

1. the teachers: one job per task and seed (`--specialists --seeds K data.tasks=[TASK]`,
   the same run as the one command's RUN/specialist-TASK/seed-K);
2. the students: one `--distill --seeds K` per seed, started once every teacher is
   trained, so each task is taught by all of its specialist's seeds;
3. `--distill --seeds 0,1,2` over the same folder (every run finished: it writes the
   summaries), then `minbert compare RUN/student RUN`.
It prints each phase's wall time and the total, and the device. Every run is an ordinary
run folder (locked, resumable): started again, finished runs are read, not retrained.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

from gpu_seeds import job_env, run_jobs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lean-distill.toml")
    parser.add_argument("--run-root", default="runs/gpu-distill")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default="sst,quora,sts",
                        help="the config's tasks, each a teacher job per seed")
    parser.add_argument("--workers", type=int, default=9)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per job")
    parser.add_argument("--stop-at", type=float, default=560.0,
                        help="seconds after which running jobs are stopped (they resume)")
    parser.add_argument("--extra", nargs="*", default=[])
    args = parser.parse_args()
    root = Path(args.run_root)
    root.mkdir(parents=True, exist_ok=True)
    seeds, tasks = args.seeds.split(","), args.tasks.split(",")
    train = [sys.executable, "-m", "minbert", "train", "--config", args.config,
             "--run-dir", str(root)]
    overrides = [f'train.device="{args.device}"', *args.extra]  # after the flags
    env = job_env(args.threads)
    start = time.monotonic()
    teachers = [(f"specialist {task} seed {seed}",
                 [*train, "--specialists", "--seeds", seed, *overrides,
                  f'data.tasks=["{task}"]'],
                 root / f"specialist-{task}-seed-{seed}.log")
                for seed in seeds for task in tasks]
    done, failed = run_jobs(teachers, args.workers, env, stop_at=args.stop_at, start=start)
    phase1 = time.monotonic() - start
    print(f"teachers: {len(done)} of {len(teachers)} in {phase1:.0f} s", flush=True)
    if failed or len(done) < len(teachers):
        return 1
    students = [(f"student seed {seed}", [*train, "--distill", "--seeds", seed, *overrides],
                 root / f"student-seed-{seed}.log") for seed in seeds]
    done, failed = run_jobs(students, args.workers, env, stop_at=args.stop_at, start=start)
    phase2 = time.monotonic() - start - phase1
    print(f"students: {len(done)} of {len(students)} in {phase2:.0f} s", flush=True)
    if failed or len(done) < len(students):
        return 1
    subprocess.run([*train, "--distill", "--seeds", args.seeds, *overrides], env=env,
                   check=True,
                   stdout=open(root / "summary.log", "w"), stderr=subprocess.STDOUT)
    subprocess.run([sys.executable, "-m", "minbert", "compare", str(root / "student"),
                    str(root)], env=env, check=True)
    print(f"total {time.monotonic() - start:.0f} s on {args.device} "
          f"({len(seeds)} seeds: {len(teachers)} teachers, {len(students)} students)",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
