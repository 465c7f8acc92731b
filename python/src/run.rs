//! Running a computation with the GIL released and Ctrl-C honoured: the work runs on a scoped
//! worker thread while the calling (main) thread waits in slices of 50 ms, checking Python's
//! signals between them. A `KeyboardInterrupt` (or any exception a signal handler raises)
//! requests a stop through [`cellfate_kernels::interrupt`]; the library's loops end at their
//! next iteration, the stage returns without storing anything, and the exception is raised.

use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use cellfate_kernels::interrupt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How often the waiting thread checks Python's signals.
const POLL: Duration = Duration::from_millis(50);

/// Runs `f` off the GIL; `Err` when a signal handler raised (the computation is stopped and
/// its result dropped) or the computation panicked.
pub(crate) fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    let _scope = interrupt::Scope::new();
    std::thread::scope(|s| {
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
    })
}
