"""Progress for long work: a tqdm bar on a terminal, plain lines at a modest interval in a log file.

A bar's carriage-return updates written to a file pile up into one line of thousands of characters; when
stderr is not a terminal, :class:`LineProgress` prints ``desc: n/total unit (pct%), rate, elapsed`` lines
instead, at most one per ``interval`` seconds (and one at the end).
"""

from __future__ import annotations

import sys
import time


class LineProgress:
    """The part of tqdm's interface the package uses (``update``, ``n``, ``write``, ``close``), as lines."""

    def __init__(self, total: float | None = None, initial: float = 0, unit: str = "it", desc: str = "progress",
                 interval: float = 30.0, stream=None, scale_bytes: bool = False):
        self.total, self.n, self.unit, self.desc, self.interval = total, initial, unit, desc, interval
        self._stream = stream or sys.stderr
        self._scale = scale_bytes
        self._start = self._last = time.monotonic()
        self._initial = initial
        self._closed = False

    def _amount(self, x: float) -> str:
        if self._scale:
            return f"{x / 2**20:.1f} Mi{self.unit}"
        return f"{int(x)} {self.unit}"

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        done = self._amount(self.n)
        if self.total:
            done += f"/{self._amount(self.total)} ({100 * self.n / self.total:.0f}%)"
        rate_text = f"{rate / 2**20:.2f} Mi{self.unit}/s" if self._scale else f"{rate:.2f} {self.unit}/s"
        return f"{self.desc}: {done}, {rate_text}, {elapsed:.0f}s elapsed"

    def update(self, k: float = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            print(self._line(), file=self._stream, flush=True)

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            print(self._line(), file=self._stream, flush=True)


def progress(total: float | None = None, *, initial: float = 0, unit: str = "it", desc: str = "progress",
             scale_bytes: bool = False, interval: float = 30.0, **tqdm_kwargs):
    """A tqdm bar when stderr is a terminal, else a :class:`LineProgress`."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        if scale_bytes:
            tqdm_kwargs.update(unit_scale=True, unit_divisor=1024)
        return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, **tqdm_kwargs)
    return LineProgress(total, initial, unit, desc, interval=interval, scale_bytes=scale_bytes)
