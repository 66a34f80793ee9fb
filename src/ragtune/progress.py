"""Progress of long-running work: what the library reports (``Progress``), the silent default
(``Quiet``) and the bars the CLI draws (``RichProgress``, on stderr)."""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    """What long-running verbs report: files and chunks (ingest), counted tasks (evaluations)."""

    def start(self, files: int) -> None: ...
    def file_done(self, source: str, chunks: int) -> None: ...
    def embedded(self, n: int) -> None: ...
    def task(self, name: str, total: int | None) -> object: ...
    def advance(self, task: object, n: int = 1) -> None: ...


class Quiet(Progress):
    """Reports nothing: the library's default (the protocol's own empty methods)."""


class RichProgress:
    """Progress bars on stderr (a context manager): files loaded and chunks embedded for ingest,
    one bar per task for evaluations, and training steps with loss and speed (``on_step``)."""

    def __enter__(self) -> "RichProgress":
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                            console=Console(stderr=True, highlight=False), transient=False)
        self.bar.__enter__()
        self.files = self.chunks = self.steps = None
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def log(self, line: str) -> None:
        """Print a line above the bars."""
        self.bar.console.print(line)

    def start(self, files: int) -> None:
        self.files = self.bar.add_task("files", total=files, note="")
        self.chunks = self.bar.add_task("chunks", total=0, note="")

    def file_done(self, source: str, chunks: int) -> None:
        self.bar.update(self.files, advance=1, note=source[-40:])
        task = self.bar.tasks[self.chunks]
        self.bar.update(self.chunks, total=(task.total or 0) + chunks)

    def embedded(self, n: int) -> None:
        self.bar.update(self.chunks, advance=n)

    def task(self, name: str, total: int | None):
        return self.bar.add_task(name, total=total, note="")

    def advance(self, task, n: int = 1) -> None:
        self.bar.update(task, advance=n)

    def on_step(self, record: dict[str, Any]) -> None:
        """A training step (``train.sft.train_loop``'s or ``train.rl.train_rl``'s record): step of total, loss, speed, epoch or reward."""
        if self.steps is None:
            self.steps = self.task("steps", None)
        where = (f"reward {record['reward']:+.3f} · KL {record['kl']:.2f} · length {record['length']:.0f}" if "reward" in record
                 else f"epoch {record['epoch']:.2f}")  # an RL step, or a pass over the data
        self.bar.update(self.steps, total=record["total_steps"], completed=record["step"],
                        note=f"loss {record['loss']:.3f} · {record['tokens_per_s']:.0f} tok/s · {where}")
