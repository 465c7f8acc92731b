"""Stage logging: every long call logs its start and duration on the ``cellfate`` logger
(INFO), and the library's notes (recoveries, deviations, conditioning) as warnings, as
CellRank logs through its own logger."""

from __future__ import annotations

import functools
import logging
import threading
import time

logger = logging.getLogger("cellfate")
_nesting = threading.local()


def stage(fn):
    """Logs ``Class.method``'s start, end and duration, and any new library notes."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if getattr(_nesting, "depth", 0):  # a stage calling another (e.g. a subclass's super())
            return fn(self, *args, **kwargs)
        name = f"{type(self).__name__}.{fn.__name__}"
        native = getattr(self, "_native", None)
        seen = len(native.notes) if native is not None else 0
        logger.info("%s: computing", name)
        start = time.perf_counter()
        _nesting.depth = 1
        try:
            out = fn(self, *args, **kwargs)
        finally:
            _nesting.depth = 0
        logger.info("%s: done in %.3f s", name, time.perf_counter() - start)
        if native is not None:
            for note in native.notes[seen:]:
                logger.warning("%s: %s", name, note)
        return out

    return wrapper
