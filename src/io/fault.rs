//! A last-resort report for memory faults inside libhdf5.
//!
//! libhdf5 (1.10, as Debian ships it) trusts some sizes stored in a file: a corrupted
//! variable-length string heap (`H5HG_read`) makes it copy past its buffer and the process
//! dies with SIGSEGV. We guard what we can before each call (declared shapes, external data,
//! group depth: see [`H5adReader`](super::H5adReader)); what is left is a fault inside the
//! library that no check of ours can see coming. [`install_fault_reporter`] turns it into a
//! clear message naming the file and the slot being read and exit status 2, instead of a bare
//! "Segmentation fault".
//!
//! libhdf5 can also loop forever on such a heap; attribute reads (a few bytes each) run under
//! a watchdog ([`ATTRIBUTE_READ_LIMIT`]) that reports the same way.
//!
//! Temporary outputs of the dying process are removed first
//! ([`crate::output::remove_temporaries`]).
//!
//! The reader records what it is reading in a fixed buffer; the signal
//! handler only reads that buffer and calls `write(2)` and `_exit(2)` (async-signal-safe). A
//! fault with no read in progress goes to the handler installed before ours (Rust's stack
//! overflow report) or the default action.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const CAP: usize = 2048;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU8 = AtomicU8::new(0);
static CONTEXT: [AtomicU8; CAP] = [ZERO; CAP];
static CONTEXT_LEN: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// When the attribute read in progress started (ms since [`EPOCH`], plus one; 0: none).
static ATTR_START_MS: AtomicU64 = AtomicU64::new(0);
/// Time spent in completed attribute reads, in total (ms).
static ATTR_BUSY_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// How long reading one attribute may take. Attributes are a few bytes to a few kilobytes
/// (encodings, shapes, column orders): a read that has not returned after this long is
/// libhdf5 looping on a corrupt global heap (seen in fuzzing: `H5HG_read` never returns).
pub const ATTRIBUTE_READ_LIMIT: Duration = Duration::from_secs(15);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs `read` (one attribute read through libhdf5) under the watchdog of
/// [`install_fault_reporter`]: holding libhdf5's lock (so that waiting for another thread's
/// long dataset read does not count), and reported as a corrupt file if it has not returned
/// within [`ATTRIBUTE_READ_LIMIT`].
pub(crate) fn guarded_attr_read<T>(read: impl FnOnce() -> T) -> T {
    if !INSTALLED.load(Ordering::Relaxed) {
        return read();
    }
    hdf5::sync::sync(|| {
        let start = now_ms();
        ATTR_START_MS.store(start.saturating_add(1), Ordering::Release);
        let r = read();
        ATTR_BUSY_MS.fetch_add(now_ms().saturating_sub(start), Ordering::AcqRel);
        ATTR_START_MS.store(0, Ordering::Release);
        r
    })
}

/// The context message (file and slot) as bytes.
fn context_bytes(out: &mut [u8; CAP]) -> usize {
    let n = CONTEXT_LEN.load(Ordering::Acquire).min(CAP);
    for (b, cell) in out.iter_mut().zip(CONTEXT.iter()).take(n) {
        *b = cell.load(Ordering::Relaxed);
    }
    n
}

/// The watchdog: one attribute read that has not returned within [`ATTRIBUTE_READ_LIMIT`],
/// or attribute reads taking 90 % of the last [`ATTRIBUTE_READ_LIMIT`] between them (libhdf5
/// copying a corrupt variable-length string of garbage length over and over: each read
/// returns, none is quick), is a corrupt file.
#[allow(unsafe_code)]
fn watchdog() {
    let limit = u64::try_from(ATTRIBUTE_READ_LIMIT.as_millis()).unwrap_or(u64::MAX);
    // (time, attribute-read time so far) every 250 ms over the last `limit`.
    let mut samples: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = now_ms();
        let start = ATTR_START_MS.load(Ordering::Acquire);
        let current = if start == 0 {
            0
        } else {
            now.saturating_sub(start - 1)
        };
        let busy = ATTR_BUSY_MS.load(Ordering::Acquire).saturating_add(current);
        samples.push_back((now, busy));
        while samples
            .front()
            .is_some_and(|&(t, _)| now.saturating_sub(t) > limit)
        {
            samples.pop_front();
        }
        let windowed = samples.front().is_some_and(|&(t, b)| {
            now.saturating_sub(t) + 500 >= limit && busy.saturating_sub(b) >= limit / 10 * 9
        });
        if current < limit && !windowed {
            continue;
        }
        let mut ctx = [0u8; CAP];
        let n = context_bytes(&mut ctx);
        let mut msg = b"error: ".to_vec();
        if n == 0 {
            msg.extend_from_slice(b"an .h5ad input");
        } else {
            msg.extend_from_slice(&ctx[..n]);
        }
        msg.extend_from_slice(
            format!(
                ": libhdf5 did not return from reading attributes or closing the file within {} s: the file's HDF5 structures are corrupt (libhdf5 loops on a damaged heap of variable-length strings, or copies strings of garbage length). Re-create the file from its source (anndata's write_h5ad).\n",
                ATTRIBUTE_READ_LIMIT.as_secs()
            )
            .as_bytes(),
        );
        crate::output::remove_temporaries();
        // SAFETY: write(2) on stderr with a valid buffer; _exit ends the process without
        // running destructors (the stuck thread holds libhdf5's lock).
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(2);
        }
    }
}

/// Records that `path` (at `slot`, when known) is being read; forgotten when the last
/// [`Reading`] ends.
/// Cheap (a bounded copy into a static buffer); does nothing until
/// [`install_fault_reporter`] has been called.
pub(crate) fn set_context(path: &Path, slot: &str) {
    if !INSTALLED.load(Ordering::Relaxed) {
        return;
    }
    let esc = crate::names::escape_for_terminal;
    let text = if slot.is_empty() {
        esc(&path.display().to_string()).into_owned()
    } else {
        format!("{} (slot {})", esc(&path.display().to_string()), esc(slot))
    };
    let bytes = text.as_bytes();
    let n = bytes.len().min(CAP);
    CONTEXT_LEN.store(0, Ordering::Release);
    for (cell, b) in CONTEXT.iter().zip(&bytes[..n]) {
        cell.store(*b, Ordering::Relaxed);
    }
    CONTEXT_LEN.store(n, Ordering::Release);
}

static LIVE_READERS: AtomicUsize = AtomicUsize::new(0);

/// A live reader: the context (file and slot) stays recorded while at least one exists, and is
/// forgotten when the last one is dropped.
#[derive(Debug)]
pub(crate) struct Reading(());

impl Reading {
    pub(crate) fn start(path: &Path) -> Self {
        LIVE_READERS.fetch_add(1, Ordering::AcqRel);
        set_context(path, "");
        Self(())
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if LIVE_READERS.fetch_sub(1, Ordering::AcqRel) == 1 {
            CONTEXT_LEN.store(0, Ordering::Release);
        }
    }
}

struct Old(std::cell::UnsafeCell<[libc::sigaction; 3]>);
// SAFETY: written once by `install_fault_reporter` before the handlers are installed (under
// the `INSTALLED` swap), read only by the handlers afterwards.
#[allow(unsafe_code)]
unsafe impl Sync for Old {}

#[allow(unsafe_code)]
// SAFETY: an all-zero `sigaction` is a valid value (SIG_DFL, empty mask, no flags).
static OLD: Old = Old(std::cell::UnsafeCell::new(unsafe { std::mem::zeroed() }));

/// SIGABRT too: glibc aborts when libhdf5 frees a pointer a corrupt file made it compute
/// (`free(): invalid pointer` while closing the file, seen in fuzzing).
const SIGNALS: [libc::c_int; 3] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGABRT];

/// Installs the SIGSEGV/SIGBUS/SIGABRT reporter (once per process; later calls do nothing). Meant
/// for programs (the CLI, the fuzzer), not for libraries embedding cellfate, which own their
/// signal handling.
#[allow(unsafe_code)]
pub fn install_fault_reporter() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let _ = EPOCH.get_or_init(Instant::now);
    let _ = std::thread::Builder::new()
        .name("cellfate-hdf5-watchdog".into())
        .spawn(watchdog);
    // SAFETY: plain libc calls with valid pointers; OLD is written before any handler of
    // ours can run (the handler is installed by the same `sigaction` call that saves the
    // previous action into it, one signal at a time).
    unsafe {
        let old = &mut *OLD.0.get();
        for (i, sig) in SIGNALS.into_iter().enumerate() {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, &mut old[i]);
        }
    }
}

#[allow(unsafe_code)]
extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let n = CONTEXT_LEN.load(Ordering::Acquire);
    if n > 0 && (sig == libc::SIGABRT || !near_stack_pointer(info, ctx)) {
        crate::output::remove_temporaries();
        // No stack buffers (this runs on the small signal stack): the pieces are written
        // one by one, the context straight from its static buffer (`AtomicU8` has the
        // layout of `u8`).
        let what: &[u8] = if sig == libc::SIGBUS {
            b": libhdf5 crashed (SIGBUS)"
        } else if sig == libc::SIGABRT {
            b": aborted (SIGABRT) while reading this file; the message above says why (libhdf5 or the memory allocator on damaged data, or memory exhausted)"
        } else {
            b": libhdf5 crashed (SIGSEGV)"
        };
        let rest: &[u8] = if sig == libc::SIGABRT {
            b". Re-create the file from its source (anndata's write_h5ad) if it is damaged; if it reads fine elsewhere and memory sufficed, please report this as a cellfate bug.\n"
        } else {
            b" reading this file: its HDF5 structures are corrupt (libhdf5 trusts sizes stored in the file, e.g. of variable-length strings). Re-create the file from its source (anndata's write_h5ad); if the file reads fine elsewhere, please report this as a cellfate bug.\n"
        };
        // SAFETY: write(2) and _exit(2) are async-signal-safe; every buffer is static.
        unsafe {
            let head: &[u8] = b"error: ";
            libc::write(2, head.as_ptr().cast(), head.len());
            libc::write(2, CONTEXT.as_ptr().cast(), n.min(CAP));
            libc::write(2, what.as_ptr().cast(), what.len());
            libc::write(2, rest.as_ptr().cast(), rest.len());
            libc::_exit(2);
        }
    }
    // Not ours: hand over to the previous handler (Rust's stack-overflow report) or the
    // default action (the fault re-executes and kills the process).
    let Some(i) = SIGNALS.iter().position(|&s| s == sig) else {
        return;
    };
    // SAFETY: OLD was fully written before this handler was installed; sigaction and
    // the previous handler are called as the kernel would.
    unsafe {
        let old = &(*OLD.0.get())[i];
        let h = old.sa_sigaction;
        if h == libc::SIG_DFL || h == libc::SIG_IGN {
            libc::sigaction(sig, old, std::ptr::null_mut());
        } else if old.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(h);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(h);
            f(sig);
        }
    }
}

/// Whether the faulting address lies next to the interrupted stack pointer: a stack overflow
/// (a guard-page hit), which the previous handler (Rust's) reports as such.
#[allow(unsafe_code)]
fn near_stack_pointer(info: *mut libc::siginfo_t, ctx: *mut libc::c_void) -> bool {
    if info.is_null() || ctx.is_null() {
        return false;
    }
    // SAFETY: the kernel passes a valid siginfo_t and ucontext_t to an SA_SIGINFO handler.
    let (addr, sp) = unsafe {
        let addr = (*info).si_addr() as usize;
        let uc = &*(ctx as *const libc::ucontext_t);
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        let sp = uc.uc_mcontext.gregs[libc::REG_RSP as usize] as usize;
        #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
        let sp = uc.uc_mcontext.sp as usize;
        #[cfg(not(all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        )))]
        let sp = {
            let _ = uc;
            0usize
        };
        (addr, sp)
    };
    sp != 0 && addr.abs_diff(sp) < 1 << 20
}
