"""Progress of long work: a tqdm bar on a terminal; where stderr is not one (nohup, Slurm,
CI logs) one plain line at a regular interval instead, never `\r` frames:

    epoch 1: 120/581 steps (21%), 0:01:05 elapsed, ETA 0:03:58, loss=1.234, ex_s=95.2
"""
from __future__ import annotations

import sys
import time
from datetime import timedelta

from tqdm import tqdm

PLAIN_EVERY = 30.0  # seconds between plain lines


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0,
                 enabled: bool = True, every: float | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.enabled, self.postfix = enabled, {}
        self.every = PLAIN_EVERY if every is None else every
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, mininterval=2,
                            dynamic_ncols=True, leave=False, file=self.stream)
        self.start = self.last = time.perf_counter()
        self.start_done = self.shown = initial

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self.last >= self.every:
            self.line()

    def set_postfix(self, **values) -> None:
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def line(self) -> None:
        """One plain progress line: done/total, elapsed, ETA and the latest figures."""
        now = time.perf_counter()
        self.last, self.shown = now, self.done
        elapsed, done = now - self.start, self.done - self.start_done
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        eta = (f", ETA {_clock(elapsed / done * (self.total - self.done))}"
               if done and self.total else "")
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        units = self.unit + ("es" if self.unit.endswith(("ch", "s")) else "s")
        print(f"{self.desc}: {self.done}/{self.total} {units}{share}, {_clock(elapsed)} "
              f"elapsed{eta}{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done != self.shown and time.perf_counter() - self.start \
                >= self.every:
            self.line()  # how it ended, when it took long enough to have reported

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
