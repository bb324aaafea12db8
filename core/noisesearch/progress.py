"""What a run shows on stderr while it works: a status line while the model and the verifiers
load (nothing else is printed then, for seconds), and a progress bar for the search (rich), as
an engine listener."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from noisesearch.engine import Usage
from noisesearch.finite import is_finite
from noisesearch.types import Candidate


class LoadingStatus:
    """One status line on stderr, replaced by each :meth:`show`: a spinner on a terminal, a
    plain line per message otherwise (a log keeps what the run was doing when it stopped)."""

    def __init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True)
        self._status: Any = None

    def show(self, message: str) -> None:
        from rich.text import Text

        if not self._console.is_terminal:
            self._console.print(message, markup=False, highlight=False, soft_wrap=True)
        elif self._status is None:
            self._status = self._console.status(Text(message))  # a name is not rich markup
            self._status.start()
        else:
            self._status.update(Text(message))

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


class ProgressBar:
    """Shows candidates, NFEs spent out of the budget, NFEs per second and the best score."""

    def __init__(self, total_nfe: int | None, total_candidates: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.best: float | None = None
        self._progress = Progress(
            TextColumn("[bold]searching"),
            BarColumn(),
            TextColumn(f"{{task.fields[nfe]}}/{total_nfe} NFEs" if total_nfe else "{task.fields[nfe]} NFEs"),
            TextColumn(
                f"{{task.fields[candidates]}}/{total_candidates} candidates"
                if total_candidates else "{task.fields[candidates]} candidates"
            ),
            TextColumn("{task.fields[rate]} NFE/s"),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        total = total_nfe if total_nfe else total_candidates
        self._by_nfe = bool(total_nfe)
        self._task = self._progress.add_task(
            "search", total=total, nfe=0, candidates=0, rate="-", best="-"
        )
        self._progress.start()

    def on_candidates(self, candidates: Sequence[Candidate], usage: Usage) -> None:
        for candidate in candidates:
            finite = is_finite(candidate.objective)  # NaN and infinities are never "best"
            if finite and (self.best is None or candidate.objective > self.best):
                self.best = candidate.objective
        seconds = usage.model_seconds + usage.verifier_seconds
        fields: dict[str, Any] = {
            "nfe": usage.nfe,
            "candidates": usage.candidates,
            "rate": f"{usage.nfe / seconds:,.0f}" if seconds > 0 else "-",
            "best": f"{self.best:.4g}" if self.best is not None else "-",
        }
        completed = usage.nfe if self._by_nfe else usage.candidates
        self._progress.update(self._task, completed=completed, **fields)

    def close(self) -> None:
        self._progress.stop()
