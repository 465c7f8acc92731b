"""Ctrl-C in a notebook interrupts a long call: SIGINT during GPCCA's macrostates (Nelder-Mead
with 16 states on pancreas, about two minutes uninterrupted) raises ``KeyboardInterrupt``
within a second, leaves no macrostates behind, and the estimator still works afterwards."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent(
    """
    import signal, sys, time, warnings
    warnings.simplefilter("ignore")
    import anndata, cellfate as cr
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive session
    a = anndata.read_h5ad(sys.argv[1])
    k = cr.kernels.PrecomputedKernel(a, obsp_key="T_combined").compute_transition_matrix()
    g = cr.estimators.GPCCA(k)
    g.compute_schur(n_components=20)
    print("ready", flush=True)
    t = time.time()
    try:
        g.compute_macrostates(n_states=16)
        print("finished", flush=True)
    except KeyboardInterrupt:
        print(f"interrupted {time.time() - t:.3f}", flush=True)
    assert g.macrostates is None, "an interrupted stage stored its result"
    g.compute_macrostates(n_states=3)
    print("after", len(g.macrostates.cat.categories), flush=True)
    """
)


def test_ctrl_c_interrupts_a_long_call(pancreas_path):
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(pancreas_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "ready", line + p.stderr.read()
    time.sleep(0.5)
    sent = time.time()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    elapsed = time.time() - sent
    assert p.returncode == 0, err
    lines = out.split()
    assert lines[0] == "interrupted", out
    assert float(lines[1]) < 2.0, out  # 0.5 s before the signal + at most 1.5 s to stop
    assert lines[2:] == ["after", "3"], out
    assert elapsed < 60
