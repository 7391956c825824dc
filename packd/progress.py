"""Progress that reaches a log: rich's live bars in a terminal; when output goes to a file or a pipe (CI logs,
`tee`), plain lines at every 10 % of a task (at most one each `min_interval` seconds, and always its last) with the
time elapsed and an estimate of what is left, printed as they happen. Stage titles are printed whole (a terminal
rule only when the title fits on it)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class LogProgress:
    """The part of `rich.progress.Progress` packd uses, as plain log lines: a line when a task crosses a tenth of
    its total (unless one was printed less than `min_interval` seconds ago), and when it completes."""

    def __init__(self, console: Console, tenths: int = 10, min_interval: float = 10.0):
        self.console, self.tenths, self.min_interval = console, tenths, min_interval
        self.tasks: dict[int, dict[str, Any]] = {}
        self.last_line = -float("inf")

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "done": 0.0, "start": time.monotonic(),
                            "printed": 0, "fields": fields}
        return task

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, advance: float = 0, description: str | None = None, **fields: Any) -> None:
        t = self.tasks[task]
        t["done"] += advance
        t["fields"].update(fields)
        if description is not None:
            t["description"] = description
        if not t["total"]:
            return
        step = min(self.tenths, int(self.tenths * t["done"] / t["total"]))
        now = time.monotonic()
        if step > t["printed"] and (step == self.tenths or now - self.last_line >= self.min_interval):
            t["printed"], self.last_line = step, now
            self.console.print(self.line(t), markup=False, highlight=False, soft_wrap=True)

    @staticmethod
    def line(t: dict[str, Any]) -> str:
        """'train epoch 2/4 loss 0.4312: 60/120 (50 %), 0:41 elapsed, about 0:41 left'."""
        elapsed = time.monotonic() - t["start"]
        left = elapsed * (t["total"] - t["done"]) / max(t["done"], 1e-9)
        fields = "".join(f" {k} {v:.4f}" if isinstance(v, float) else f" {k} {v}" for k, v in t["fields"].items())
        return (f"{t['description']}{fields}: {t['done']:g}/{t['total']:g} ({100 * t['done'] / t['total']:.0f} %), "
                f"{_clock(elapsed)} elapsed, about {_clock(left)} left")


def progress(*columns: str | ProgressColumn, disable: bool = False,
             console: Console | None = None) -> Progress | LogProgress:
    """Live bars in a terminal, log lines elsewhere; nothing with `disable`."""
    console = console or Console()
    if disable or console.is_terminal:
        return Progress(*columns, console=console, disable=disable)
    return LogProgress(console)


def stage(console: Console, title: str) -> None:
    """A stage title, never cut: a rule across a terminal when it fits, else the title on its own line."""
    if console.is_terminal and len(title) + 8 <= console.width:
        console.rule(title)
    else:
        console.print(f"== {title}", markup=False, highlight=False, soft_wrap=True)
