"""Progress bars: tqdm on a terminal; in a log (stderr redirected, as under nohup) one plain line a minute for
work that runs longer than a minute, so a run in the background still shows where it is and its ETA."""
from __future__ import annotations

import re
import sys

LOG_EVERY_S = 60.0


_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # what tqdm writes to place nested bars


class _Lines:
    """A stream for tqdm that writes each redraw as a whole line instead of going back over the last one."""

    def __init__(self, stream):
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        text = _CURSOR_MOVES.sub("", text).replace("\r", "").strip()
        counts = text.split("[")[0]  # before the times and rate: closing redraws the last counts once more
        if text and counts != self.last:
            self.stream.write(text + "\n")
            self.last = counts

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, *, show: bool | None = None, **kwargs):
    """A tqdm bar (`kwargs` as tqdm takes them). `show`: True draws it, False hides it, None (default) draws it on a
    terminal and writes a line every minute to a redirected stderr, after the first minute."""
    from tqdm.auto import tqdm

    if show is None and not _on_terminal() and "ipykernel" not in sys.modules:  # a notebook draws its own bars
        kwargs.update(file=_Lines(sys.stderr), mininterval=LOG_EVERY_S, maxinterval=LOG_EVERY_S, delay=LOG_EVERY_S,
                      ascii=True, ncols=120, dynamic_ncols=False)
        return tqdm(iterable, **kwargs)
    return tqdm(iterable, disable=not show if show is not None else None, **kwargs)


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def pairs_in_chunks(fn, q1: list, q2: list, desc: str = "pairs", show: bool | None = None, size: int = 2048):
    """`fn(q1, q2)` (an array per pair, on its last axis) computed `size` pairs at a time under a progress bar; a
    pair's result does not depend on its batch, so it equals one call on all of them."""
    import numpy as np

    parts = []
    with progress_bar(total=len(q1), desc=desc, unit="pair", show=show if len(q1) > size else False) as bar:
        for start in range(0, len(q1), size):
            parts.append(np.asarray(fn(q1[start : start + size], q2[start : start + size])))
            bar.update(len(q1[start : start + size]))
    return np.concatenate(parts, axis=-1) if parts else np.asarray(fn(q1, q2))
