"""Progress bars for long calls: while a computation runs, the native core reports the running
stage and its steps here (after the first second), and a ``tqdm`` bar shows them when tqdm is
installed (``cellfate._progress.enabled = False`` turns the bars off). Without tqdm, nothing
is shown beyond the stage logging of ``cellfate._log``."""

from __future__ import annotations

enabled = True
#: Calls shorter than this (seconds) show no bar.
after = 1.0


def update(bar, stage, done, total):
    """Shows ``done`` of ``total`` steps of ``stage`` (total 0: unknown); returns the bar."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    if bar is None or bar.desc != stage:
        close(bar)
        bar = tqdm(total=total or None, desc=stage, leave=False)
    if done > bar.n:
        bar.update(done - bar.n)
    return bar


def close(bar):
    if bar is not None:
        bar.close()
