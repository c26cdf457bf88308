"""Build progress: what a user watches while ``lamina build`` runs.

The executor reports each step's life (``start`` -> ``output``* -> ``done``, or
``cached``, or ``fail``) to a ``Progress``; several stage threads may report at
once, so every implementation serialises itself.

- ``Progress`` itself says nothing (``-q``);
- ``PlainProgress`` writes BuildKit-style lines for logs and CI::

      #3 [build 2/5] RUN make
      #3 0.412 cc -o app main.c
      #3 DONE 1.3s
      #4 [build 3/5] COPY . /src
      #4 CACHED

- ``RichProgress`` keeps a live view on a terminal: each step with its state and
  time, and the last lines of output of the steps that are running.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any

TAIL_LINES = 20  # kept per step for error reports
_LIVE_TAIL = 6  # shown under a running step in the live view


@dataclass
class Step:
    number: int
    name: str
    status: str = "pending"  # running | cached | done | error
    started: float | None = None
    finished: float | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    partial: bytes = b""

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


class Progress:
    """The quiet reporter; subclasses show things."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.steps: list[Step] = []
        self.warnings: list[str] = []
        self.t0 = time.monotonic()

    def add(self, name: str) -> Step:
        with self.lock:
            step = Step(number=len(self.steps) + 1, name=name)
            self.steps.append(step)
            return step

    def start(self, step: Step) -> None:
        with self.lock:
            step.status = "running"
            step.started = time.monotonic()
            self._started(step)

    def cached(self, step: Step) -> None:
        with self.lock:
            step.status = "cached"
            step.started = step.finished = time.monotonic()
            self._cached(step)

    def output(self, step: Step, data: bytes) -> None:
        with self.lock:
            buf = step.partial + data
            *lines, step.partial = buf.split(b"\n")
            for raw in lines:
                line = raw.rstrip(b"\r").decode("utf-8", "replace")
                step.tail.append(line)
                self._line(step, line)

    def _flush(self, step: Step) -> None:
        if step.partial:
            line = step.partial.decode("utf-8", "replace")
            step.partial = b""
            step.tail.append(line)
            self._line(step, line)

    def done(self, step: Step) -> None:
        with self.lock:
            self._flush(step)
            step.status = "done"
            step.finished = time.monotonic()
            self._done(step)

    def fail(self, step: Step, message: str) -> None:
        with self.lock:
            self._flush(step)
            step.status = "error"
            step.finished = time.monotonic()
            self._failed(step, message)

    def warn(self, message: str) -> None:
        with self.lock:
            self.warnings.append(message)
            self._warn(message)

    def close(self) -> None:
        pass

    @property
    def shows_output(self) -> bool:
        """True when a failing step's output has been shown already."""
        return False

    # hooks
    def _started(self, step: Step) -> None:
        pass

    def _cached(self, step: Step) -> None:
        pass

    def _line(self, step: Step, line: str) -> None:
        pass

    def _done(self, step: Step) -> None:
        pass

    def _failed(self, step: Step, message: str) -> None:
        pass

    def _warn(self, message: str) -> None:
        pass


class PlainProgress(Progress):
    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr

    @property
    def shows_output(self) -> bool:
        return True

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _started(self, step: Step) -> None:
        self._write(f"#{step.number} {step.name}")

    def _cached(self, step: Step) -> None:
        self._write(f"#{step.number} {step.name}")
        self._write(f"#{step.number} CACHED")

    def _line(self, step: Step, line: str) -> None:
        self._write(f"#{step.number} {step.elapsed():.3f} {line}")

    def _done(self, step: Step) -> None:
        self._write(f"#{step.number} DONE {step.elapsed():.1f}s")

    def _failed(self, step: Step, message: str) -> None:
        self._write(f"#{step.number} ERROR: {message}")

    def _warn(self, message: str) -> None:
        self._write(f"WARNING: {message}")


class RichProgress(Progress):
    """A live view on a terminal (stderr)."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self._final = False
        self.live = Live(
            console=self.console,
            get_renderable=self._render,
            refresh_per_second=8,
            transient=False,
        )
        self.live.start()

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        with self.lock:
            steps = list(self.steps)
            elapsed = time.monotonic() - self.t0
            finished = sum(1 for s in steps if s.status in ("done", "cached"))
            grid = Table.grid(padding=(0, 1))
            grid.add_column()
            grid.add_column(justify="right")
            title = "Building" if not self._final else "Built"
            grid.add_row(
                Text(f"[+] {title} {elapsed:.1f}s ({finished}/{len(steps)})", style="bold"), ""
            )
            for s in steps:
                if s.status == "pending":
                    continue
                style = {"running": "cyan", "cached": "blue", "done": "green", "error": "red"}
                label = Text(
                    f" => {s.name}", style=style[s.status], overflow="ellipsis", no_wrap=True
                )
                if s.status == "cached":
                    right = Text("CACHED", style="blue")
                elif s.status == "error":
                    right = Text(f"ERROR {s.elapsed():.1f}s", style="red")
                else:
                    right = Text(f"{s.elapsed():.1f}s")
                grid.add_row(label, right)
                if s.status == "running" and not self._final:
                    for line in list(s.tail)[-_LIVE_TAIL:]:
                        grid.add_row(
                            Text(f"    {line}", style="dim", overflow="ellipsis", no_wrap=True), ""
                        )
            return grid

    def _warn(self, message: str) -> None:
        self.console.print(f"WARNING: {message}", style="yellow")

    def _failed(self, step: Step, message: str) -> None:
        pass

    def close(self) -> None:
        with self.lock:
            self._final = True
        self.live.refresh()
        self.live.stop()
