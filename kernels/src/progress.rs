//! Progress of the long loops, for a caller on another thread to show (a progress bar in a
//! notebook): a stage names itself and its number of steps with [`start`], its loop calls
//! [`advance`], and the caller reads [`snapshot`] when it likes. Like
//! [`crate::interrupt`], the record is process-wide and never changes a result.
//!
//! ```
//! use cellfate_kernels::progress;
//! progress::start("cells", 10);
//! progress::advance(4);
//! assert_eq!(progress::snapshot(), Some(("cells", 4, 10)));
//! progress::finish();
//! assert_eq!(progress::snapshot(), None);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

static DONE: AtomicU64 = AtomicU64::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);
static STAGE: Mutex<Option<&'static str>> = Mutex::new(None);

/// A stage of `total` steps begins (what a progress bar shows as its description).
pub fn start(stage: &'static str, total: u64) {
    *STAGE.lock().unwrap_or_else(PoisonError::into_inner) = Some(stage);
    DONE.store(0, Ordering::Relaxed);
    TOTAL.store(total, Ordering::Relaxed);
}

/// `n` more steps are done.
pub fn advance(n: u64) {
    DONE.fetch_add(n, Ordering::Relaxed);
}

/// The running stage, its steps done and its total; `None` when no stage runs.
pub fn snapshot() -> Option<(&'static str, u64, u64)> {
    let stage = (*STAGE.lock().unwrap_or_else(PoisonError::into_inner))?;
    Some((
        stage,
        DONE.load(Ordering::Relaxed),
        TOTAL.load(Ordering::Relaxed),
    ))
}

/// The stage is over.
pub fn finish() {
    *STAGE.lock().unwrap_or_else(PoisonError::into_inner) = None;
}
