//! Cooperative interruption of long computations (Ctrl-C in a notebook, a cancelled job).
//!
//! A caller that wants to stop a computation running on another thread calls [`request`];
//! the long loops of the numerical crates (Arnoldi restarts, the rotation optimisers, GMRES,
//! kernel rows) call [`requested`] between iterations and stop early, and the stage that
//! ran them returns its crate's `Interrupted` error instead of a result. Nothing is checked
//! unless a request was made: results never depend on this module otherwise.
//!
//! The flag is process-wide (a stage deep inside rayon workers has nowhere to receive a token
//! from), so a request stops every computation running in the process; [`Scope`] clears it
//! when a new computation starts and when it ends.
//!
//! ```
//! use cellfate_kernels::interrupt;
//! let scope = interrupt::Scope::new();
//! assert!(!interrupt::requested());
//! interrupt::request();
//! assert!(interrupt::requested());
//! drop(scope);
//! assert!(!interrupt::requested());
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks every running computation to stop at its next check.
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Whether a stop was requested (one atomic load: cheap enough for every loop iteration).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Clears the request when created and when dropped: wrap one computation in it.
#[derive(Debug)]
pub struct Scope(());

impl Scope {
    /// Starts a computation with no request pending.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        REQUESTED.store(false, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        REQUESTED.store(false, Ordering::Relaxed);
    }
}
