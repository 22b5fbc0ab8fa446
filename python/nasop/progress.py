"""Following a search: a tqdm bar (a terminal's or a notebook's widget, through tqdm.auto)
of finished trials out of maxTrials, with the best value so far."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Snapshot:
    """What one look at a search sees."""

    finished: int
    total: int
    best: Optional[float]
    ended: bool
    phase: str = ""


def follow(
    name: str,
    look: Callable[[], Snapshot],
    *,
    timeout: Optional[float] = None,
    interval: float = 1.0,
    progress: bool = True,
) -> Snapshot:
    """Calls ``look`` every ``interval`` seconds until it says the search ended; shows a
    bar when ``progress``. Raises TimeoutError after ``timeout`` seconds."""
    from tqdm.auto import tqdm

    deadline = None if timeout is None else time.monotonic() + timeout
    snap = look()
    bar = tqdm(total=snap.total or None, desc=name, unit="trial", disable=not progress, dynamic_ncols=True)
    try:
        while True:
            if snap.total and bar.total != snap.total:
                bar.total = snap.total
            bar.n = min(snap.finished, snap.total) if snap.total else snap.finished
            postfix = {}
            if snap.best is not None:
                postfix["best"] = f"{snap.best:.4g}"
            if snap.phase:
                postfix["phase"] = snap.phase
            bar.set_postfix(postfix, refresh=False)
            bar.refresh()
            if snap.ended:
                return snap
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"experiment {name} has not ended after {timeout:g} s "
                    f"({snap.finished} of {snap.total} trials finished); call wait() again to keep following it"
                )
            time.sleep(interval)
            snap = look()
    finally:
        bar.close()
