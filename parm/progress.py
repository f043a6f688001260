"""What a person sees on long work (training, ``parm eval``, the benchmark): a progress bar on a terminal, plain log
lines in logs and CI.

``Progress`` draws a tqdm bar on stderr when stderr is a terminal (and routes the package's log records through it,
so they do not break the bar); otherwise each step is one ``logging`` line with the same facts.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Steps of one long job: ``step(message, **postfix)`` after each one.

    On a terminal, a bar with the count, the rate, the ETA and ``postfix`` (e.g. loss, validation accuracy); else
    ``logger`` gets ``"<what> i/n: message"`` per step. ``bar=False`` forces the plain lines.
    """

    def __init__(
        self,
        what: str,
        total: int,
        logger: logging.Logger,
        *,
        unit: str = "step",
        initial: int = 0,
        bar: bool | None = None,
    ) -> None:
        self.what, self.total, self.logger, self.done = what, total, logger, initial
        self._bar: tqdm | None = None
        self._redirect: contextlib.AbstractContextManager[None] | None = None
        if on_terminal() if bar is None else bar:
            self._bar = tqdm(total=total, initial=initial, desc=what, unit=unit, file=sys.stderr, leave=True)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def step(self, message: str = "", n: int = 1, **postfix: object) -> None:
        self.done += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({key: _short(value) for key, value in postfix.items()}, refresh=False)
            self._bar.update(n)
        else:
            details = ", ".join(f"{key} {_short(value)}" for key, value in postfix.items())
            text = "; ".join(part for part in (details, message) if part)
            self.logger.info("%s %d/%d%s", self.what, self.done, self.total, f": {text}" if text else "")

    def write(self, line: str) -> None:
        """A line for the person (a finished cell's numbers): above the bar on a terminal, else a log line."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            self.logger.info("%s", line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def iterate(items: list, what: str, logger: logging.Logger, *, unit: str = "step") -> Iterator:
    """``items`` one by one under a ``Progress`` (a bar on a terminal, a log line per item otherwise)."""
    with Progress(what, len(items), logger, unit=unit) as progress:
        for item in items:
            yield item
            progress.step(str(item))


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
