//! Running a computation with the GIL released and Ctrl-C honoured: the work runs on a scoped
//! worker thread while the calling (main) thread waits in slices of 50 ms, checking Python's
//! signals between them. A `KeyboardInterrupt` (or any exception a signal handler raises)
//! requests a stop through [`cellfate_kernels::interrupt`]; the library's loops end at their
//! next iteration, the stage returns without storing anything, and the exception is raised.

use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cellfate_kernels::{interrupt, progress};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How often the waiting thread checks Python's signals.
const POLL: Duration = Duration::from_millis(50);

/// The progress bar of one call (`cellfate._progress`, tqdm when installed): shown once the
/// call has run for `cellfate._progress.after` seconds, updated from [`progress::snapshot`]
/// at every poll.
struct Bar<'py> {
    helper: Option<Bound<'py, PyAny>>,
    bar: Option<Bound<'py, PyAny>>,
    started: Instant,
    after: Duration,
}

impl<'py> Bar<'py> {
    fn new(py: Python<'py>) -> Self {
        let helper = py.import("cellfate._progress").ok().map(|m| m.into_any());
        let after = helper
            .as_ref()
            .and_then(|h| h.getattr("after").ok()?.extract::<f64>().ok())
            .filter(|a| a.is_finite() && *a >= 0.0)
            .map_or(Duration::from_secs(1), Duration::from_secs_f64);
        Self {
            helper,
            bar: None,
            started: Instant::now(),
            after,
        }
    }

    /// Failures of the display never fail the computation: the bar is dropped then.
    fn tick(&mut self) {
        if self.started.elapsed() < self.after {
            return;
        }
        let (Some(helper), Some((stage, done, total))) = (&self.helper, progress::snapshot())
        else {
            return;
        };
        let bar = self.bar.take();
        self.bar = helper
            .call_method1("update", (bar, stage, done, total))
            .ok()
            .filter(|b| !b.is_none());
    }

    fn close(&mut self) {
        if let (Some(helper), Some(bar)) = (&self.helper, self.bar.take()) {
            let _ = helper.call_method1("close", (bar,));
        }
    }
}

/// Runs `f` off the GIL; `Err` when a signal handler raised (the computation is stopped and
/// its result dropped) or the computation panicked.
pub(crate) fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    let _scope = interrupt::Scope::new();
    progress::finish();
    let mut bar = Bar::new(py);
    let out = std::thread::scope(|s| {
        let (tx, rx) = channel::<()>();
        // Shared with the closures that wait off the GIL (a receiver alone is not `Sync`).
        let rx = Mutex::new(rx);
        let worker = s.spawn(move || {
            let out = f();
            // The receiver may be gone after an interrupt: nothing to tell then.
            let _ = tx.send(());
            out
        });
        loop {
            match py.detach(|| {
                rx.lock()
                    .map_err(|_| RecvTimeoutError::Disconnected)
                    .and_then(|r| r.recv_timeout(POLL))
            }) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    bar.tick();
                    if let Err(e) = py.check_signals() {
                        interrupt::request();
                        // The loops stop at their next iteration; wait for it, off the GIL.
                        let _ = py.detach(|| worker.join());
                        return Err(e);
                    }
                }
            }
        }
        py.detach(|| worker.join()).map_err(|_| {
            PyRuntimeError::new_err("cellfate: internal error: the computation panicked")
        })
    });
    bar.close();
    progress::finish();
    out
}
