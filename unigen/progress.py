"""One progress bar for every long loop: ``sample(progress=True)``, the CLI and the benchmarks.

:func:`progress_bar` returns an object with ``update(k)``, ``set_postfix_str(text)`` and
``close()`` (also a context manager): a tqdm bar when tqdm is installed, otherwise a counter
line ``desc: i/total  note`` rewritten in place, or nothing at all when disabled. Only a caller
that demands tqdm (``require_tqdm=True``) gets an ImportError where it is missing.
"""

from __future__ import annotations

import importlib.util

import sys

__all__ = ["progress_bar", "tqdm_available", "CounterLine", "NoProgress"]


class NoProgress:
    """A disabled bar: every method does nothing."""

    def update(self, k: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CounterLine(NoProgress):
    """The fallback when tqdm is not installed: one ``desc: i/total  note`` line on ``file``
    (stderr by default), rewritten in place; ``close()`` ends the line."""

    def __init__(self, total: int, desc: str, file=None):
        self.total, self.desc, self.n, self.note = total, desc, 0, ""
        self.file = file

    def _show(self) -> None:
        note = f"  {self.note}" if self.note else ""
        print(f"\r{self.desc}: {self.n}/{self.total}{note}", end="", file=self.file or sys.stderr, flush=True)

    def update(self, k: int = 1) -> None:
        self.n += k
        self._show()

    def set_postfix_str(self, s: str) -> None:
        self.note = s

    def close(self) -> None:
        print(file=self.file or sys.stderr, flush=True)


def tqdm_available() -> bool:
    """True when the optional tqdm is installed (nothing is imported)."""
    return importlib.util.find_spec("tqdm") is not None


def progress_bar(total: int, desc: str, enabled: bool = True, file=None, *, require_tqdm: bool = False,
                 leave: bool = True):
    """A progress bar over ``total`` steps labelled ``desc``, on ``file`` (default: stderr).

    Returns :class:`NoProgress` when ``enabled`` is false, a ``tqdm.auto.tqdm`` bar when tqdm is
    installed (``leave=False`` clears it when closed), else a :class:`CounterLine`; with
    ``require_tqdm=True`` a missing tqdm is an ImportError naming the extra to install instead.
    """
    if not enabled:
        return NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        if require_tqdm:
            raise ImportError(f"a progress bar ({desc}) needs tqdm: pip install 'unigen[progress]' (or tqdm)") from e
        return CounterLine(total, desc, file)
    return tqdm(total=total, desc=desc, file=file or sys.stderr, dynamic_ncols=True, leave=leave)
