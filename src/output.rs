//! Writing outputs safely: every file cellfate writes goes through this module.
//!
//! The rules (the project's standards, and issue 18's findings):
//! - **Only regular files are replaced.** An output path that exists and is a device, FIFO,
//!   socket, directory or symbolic link is refused ([`OutputError::NotRegular`]); run as root,
//!   `-o /dev/null` would otherwise replace the device node with a regular file.
//! - **Temporary files are created exclusively under unpredictable names** next to the target
//!   (`.NAME.cellfate-tmp-PID-RANDOM`, `O_CREAT | O_EXCL`), so a link planted at a guessable
//!   name is never followed, and are renamed onto the target at the end; on an error (or a
//!   panic) the temporary file is removed. A killed process leaves it behind; the next write to
//!   the same target removes temporaries of processes that no longer exist.
//! - **Checked before the work.** [`check_output`] refuses a missing or unwritable directory
//!   and a special file before any computation, so that a long run does not fail at the end.
//! - **Space**: [`check_space`] compares an estimate of the output's size with the free space
//!   of the file system and the process's file-size limit (`RLIMIT_FSIZE`), because libhdf5
//!   itself can crash on a write error in its object-copy path (issue 18), which no error
//!   handling on our side can catch.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Infix of every temporary output name: `.NAME.cellfate-tmp-PID-RANDOM`.
pub const TEMP_INFIX: &str = ".cellfate-tmp-";

/// An output that cannot be written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OutputError {
    /// The output path exists and is not a regular file.
    #[error("output {path}: it exists and is {kind}; refusing to replace it (only regular files are replaced; choose another path)")]
    NotRegular {
        /// Output path.
        path: PathBuf,
        /// What it is ("a character device", "a directory", ...).
        kind: &'static str,
    },
    /// The output's directory does not exist or is not a directory.
    #[error("output {path}: directory {dir} {problem}")]
    BadDirectory {
        /// Output path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// "does not exist", "is not a directory".
        problem: &'static str,
    },
    /// No file can be created in the output's directory.
    #[error("output {path}: cannot create files in {dir}: {source}")]
    NotWritable {
        /// Output path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Not enough space (or a file-size limit) for the output.
    #[error("output {path}: needs about {needed} but {limit}")]
    NoSpace {
        /// Output path.
        path: PathBuf,
        /// Human-readable estimate of the size needed.
        needed: String,
        /// What limits it ("only 12 MB are free on the file system", ...).
        limit: String,
    },
    /// A file-system error while writing.
    #[error("output {path}: {op}: {source}")]
    Io {
        /// Output path (the final target, not the temporary file).
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// OS error.
        source: std::io::Error,
    },
}

/// What kind of file system object `meta` describes, or `None` for a regular file.
fn special_kind(meta: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_symlink() {
        Some("a symbolic link")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// The kind of a non-regular file at `path` (links not followed), `None` when `path` is a
/// regular file or does not exist.
pub fn non_regular_kind(path: &Path) -> Option<&'static str> {
    std::fs::symlink_metadata(path)
        .ok()
        .and_then(|m| special_kind(&m))
}

/// The directory an output is written into (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
}

fn refuse_special(path: &Path) -> Result<(), OutputError> {
    match non_regular_kind(path) {
        Some(kind) => Err(OutputError::NotRegular {
            path: path.to_path_buf(),
            kind,
        }),
        None => Ok(()),
    }
}

/// Checks, before any computation, that `path` can be written: it is absent or a regular file
/// (not a link, device, FIFO, socket or directory), and its directory exists and accepts a new
/// file (probed by creating and removing an exclusive temporary file).
pub fn check_output(path: &Path) -> Result<(), OutputError> {
    refuse_special(path)?;
    let dir = parent_dir(path);
    let bad = |problem| OutputError::BadDirectory {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        problem,
    };
    match std::fs::metadata(dir) {
        Err(_) => return Err(bad("does not exist")),
        Ok(m) if !m.is_dir() => return Err(bad("is not a directory")),
        Ok(_) => {}
    }
    let probe = TempOutput::create(path, |p| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
    })
    .map_err(|e| match e {
        OutputError::Io { source, .. } => OutputError::NotWritable {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            source,
        },
        e => e,
    })?;
    drop(probe);
    Ok(())
}

/// Like [`check_output`] for a directory that will receive several outputs (plots, a batch):
/// when missing, its nearest existing ancestor must accept new entries (the command creates
/// it later, after its own checks); it must be a directory (links to a
/// directory are followed: the user named it) that accepts new files.
pub fn check_output_dir(dir: &Path) -> Result<(), OutputError> {
    let io = |op, source| OutputError::Io {
        path: dir.to_path_buf(),
        op,
        source,
    };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(OutputError::NotRegular {
                path: dir.to_path_buf(),
                kind: special_kind(&m).unwrap_or("a regular file, not a directory"),
            })
        }
        Ok(_) => {}
        Err(_) => {
            // Missing: nothing is created before the command's own checks pass; the nearest
            // existing ancestor must be a directory that accepts new entries.
            let mut anc = dir;
            loop {
                anc = match anc.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                match std::fs::metadata(anc) {
                    Ok(m) if m.is_dir() => break,
                    Ok(m) => {
                        return Err(OutputError::NotRegular {
                            path: anc.to_path_buf(),
                            kind: special_kind(&m).unwrap_or("a regular file, not a directory"),
                        })
                    }
                    Err(_) if anc == Path::new(".") || anc == Path::new("/") => {
                        return Err(io(
                            "finding an existing parent directory",
                            std::io::Error::from(std::io::ErrorKind::NotFound),
                        ))
                    }
                    Err(_) => {}
                }
            }
            return check_output(&anc.join(".cellfate-dir-probe")).map_err(|e| match e {
                OutputError::NotWritable { source, .. } => OutputError::NotWritable {
                    path: dir.to_path_buf(),
                    dir: anc.to_path_buf(),
                    source,
                },
                e => e,
            });
        }
    }
    check_output(&dir.join("probe")).map_err(|e| match e {
        OutputError::NotWritable { source, .. } => OutputError::NotWritable {
            path: dir.to_path_buf(),
            dir: dir.to_path_buf(),
            source,
        },
        e => e,
    })
}

/// A temporary file next to its target, created exclusively under an unpredictable name;
/// removed when dropped unless [`TempOutput::persist`]ed onto the target.
#[derive(Debug)]
pub struct TempOutput {
    path: Option<tempfile::TempPath>,
    target: PathBuf,
    /// Its entry in the registry [`remove_temporaries`] empties.
    registered: Option<usize>,
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if let Some(i) = self.registered.take() {
            registry::unregister(i);
        }
    }
}

/// Removes every temporary output of this process that has not been renamed into place or
/// dropped yet. Async-signal-safe (only `unlink(2)` on paths kept in static buffers): for a
/// process about to die of a fault (see `cellfate::io::fault`).
pub fn remove_temporaries() {
    registry::remove_all();
}

/// The live temporary outputs' paths, NUL-terminated, in fixed static buffers that a signal
/// handler can read without locks or allocation.
mod registry {
    use std::sync::atomic::{AtomicU8, Ordering};

    const SLOTS: usize = 32;
    const LEN: usize = 4096;
    const FREE: u8 = 0;
    const WRITING: u8 = 1;
    const READY: u8 = 2;

    static STATE: [AtomicU8; SLOTS] = [const { AtomicU8::new(FREE) }; SLOTS];
    static PATHS: [[AtomicU8; LEN]; SLOTS] = [const { [const { AtomicU8::new(0) }; LEN] }; SLOTS];

    /// Records `path`; `None` when it is too long or all slots are taken (the temporary is
    /// then only removed by the normal paths and by the next run's stale-file sweep).
    pub(super) fn register(path: &std::path::Path) -> Option<usize> {
        let bytes = path.as_os_str().as_encoded_bytes();
        if bytes.len() >= LEN || bytes.contains(&0) {
            return None;
        }
        let i = (0..SLOTS).find(|&i| {
            STATE[i]
                .compare_exchange(FREE, WRITING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        for (cell, b) in PATHS[i].iter().zip(bytes.iter().chain(std::iter::once(&0))) {
            cell.store(*b, Ordering::Relaxed);
        }
        STATE[i].store(READY, Ordering::Release);
        Some(i)
    }

    pub(super) fn unregister(i: usize) {
        STATE[i].store(FREE, Ordering::Release);
    }

    #[allow(unsafe_code)]
    pub(super) fn remove_all() {
        for i in 0..SLOTS {
            if STATE[i].load(Ordering::Acquire) != READY {
                continue;
            }
            // SAFETY: `AtomicU8` has the layout of `u8`; the slot holds a NUL-terminated path
            // (register stores the terminator, paths shorter than LEN only) and is not
            // rewritten while READY; unlink(2) is async-signal-safe. No stack buffer: this
            // runs on the small signal stack.
            unsafe {
                libc::unlink(PATHS[i].as_ptr().cast());
            }
        }
    }
}

impl TempOutput {
    /// Creates the temporary file for `target` with `open`, which must create the file at the
    /// path it is given exclusively (`O_CREAT | O_EXCL`: `OpenOptions::create_new`, HDF5's
    /// `create_excl`) and report an existing path as `ErrorKind::AlreadyExists` (a new name is
    /// then tried). Refuses a target that exists and is not a regular file. Temporaries of
    /// the same target left by processes that no longer exist are removed first.
    pub fn create<R>(
        target: &Path,
        open: impl FnMut(&Path) -> std::io::Result<R>,
    ) -> Result<(R, Self), OutputError> {
        refuse_special(target)?;
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .map_or_else(|| OsString::from("output"), OsString::from);
        remove_stale_temps(dir, &name);
        let mut prefix = OsString::from(".");
        prefix.push(&name);
        prefix.push(format!("{TEMP_INFIX}{}-", std::process::id()));
        let made = tempfile::Builder::new()
            .prefix(&prefix)
            .rand_bytes(12)
            .make_in(dir, open)
            .map_err(|source| OutputError::Io {
                path: target.to_path_buf(),
                op: "creating the temporary output next to it",
                source,
            })?;
        let (r, path) = made.into_parts();
        let registered = registry::register(&path);
        Ok((
            r,
            Self {
                path: Some(path),
                target: target.to_path_buf(),
                registered,
            },
        ))
    }

    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// The final target.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes the temporary file to disk and renames it onto the target (checked again to be
    /// absent or a regular file just before).
    pub fn persist(mut self) -> Result<(), OutputError> {
        let Some(path) = self.path.take() else {
            return Ok(());
        };
        let io = |op, source| OutputError::Io {
            path: self.target.clone(),
            op,
            source,
        };
        // Open without following links, read-only: only to fsync what was written.
        let f = open_nofollow(&path).map_err(|e| io("reopening the temporary output", e))?;
        f.sync_all()
            .map_err(|e| io("syncing the temporary output", e))?;
        drop(f);
        refuse_special(&self.target)?;
        path.persist(&self.target)
            .map_err(|e| io("renaming the temporary output into place", e.error))?;
        Ok(())
    }
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Writes `bytes` to `path`: an exclusive temporary file next to it, renamed at the end.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes `path` through `write`, which gets the exclusive temporary file (see
/// [`write_atomic`]).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), OutputError> {
    let (file, tmp) = TempOutput::create(path, |p| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
    })?;
    let mut w = std::io::BufWriter::new(file);
    write(&mut w)
        .and_then(|()| w.flush())
        .map_err(|source| OutputError::Io {
            path: path.to_path_buf(),
            op: "writing",
            source,
        })?;
    drop(w);
    tmp.persist()
}

/// Removes temporary outputs for `name` left in `dir` by processes that no longer exist.
fn remove_stale_temps(dir: &Path, name: &std::ffi::OsStr) {
    let prefix = format!(".{}{TEMP_INFIX}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
            // Only files (a planted link is removed, never followed; a directory is left).
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !alive && !is_dir {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Sizes as people read them: `12.3 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Refuses to write about `additional` more bytes into a file of `written` bytes for
/// `target` when the file system has less free space, or the process's file-size limit
/// (`ulimit -f`, `RLIMIT_FSIZE`) is below the total. The estimate should be generous (an upper
/// bound): it guards against libhdf5 crashing on a failed write, which happens in its
/// object-copy path and cannot be caught.
pub fn check_space(target: &Path, written: u64, additional: u64) -> Result<(), OutputError> {
    // HDF5's own overhead (object headers, B-trees, free-space rounding): 5 % and 1 MiB.
    let additional = additional
        .saturating_add(additional / 20)
        .saturating_add(1 << 20);
    let total = written.saturating_add(additional);
    if let Some(limit) = file_size_limit() {
        if total > limit {
            return Err(OutputError::NoSpace {
                path: target.to_path_buf(),
                needed: human_bytes(total),
                limit: format!(
                    "the file-size limit of this process (ulimit -f, RLIMIT_FSIZE) is {}",
                    human_bytes(limit)
                ),
            });
        }
    }
    if let Some(free) = free_space(parent_dir(target)) {
        if additional > free {
            return Err(OutputError::NoSpace {
                path: target.to_path_buf(),
                needed: format!("{} more", human_bytes(additional)),
                limit: format!("only {} are free on its file system", human_bytes(free)),
            });
        }
    }
    Ok(())
}

/// The soft `RLIMIT_FSIZE` of this process in bytes (`None` when unlimited).
pub fn file_size_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` into the valid, exclusively borrowed `lim`.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Free bytes available to unprivileged users on the file system holding `dir` (`statvfs`),
/// `None` when it cannot be asked.
pub fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers).
    #[allow(unsafe_code)]
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `st` is a valid,
    // exclusively borrowed `statvfs` the call fills.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // `fsblkcnt_t` and `c_ulong` are u64 only on 64-bit
    (rc == 0).then(|| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_special_files_and_links() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = check_output(Path::new("/dev/null")).expect_err("device refused");
        assert!(e.to_string().contains("character device"), "{e}");
        assert!(check_output(d.path()).is_err());
        let target = d.path().join("victim");
        std::fs::write(&target, b"keep").expect("write");
        let link = d.path().join("out.csv");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let e = write_atomic(&link, b"x").expect_err("link refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
    }

    #[test]
    fn writes_atomically_and_leaves_no_temporary() {
        let d = tempfile::tempdir().expect("tempdir");
        let out = d.path().join("a.txt");
        check_output(&out).expect("writable");
        write_atomic(&out, b"one").expect("write");
        write_atomic(&out, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&out).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("a.txt")]);
        let e = check_output(&d.path().join("missing/a.txt")).expect_err("no dir");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn failed_write_removes_its_temporary() {
        let d = tempfile::tempdir().expect("tempdir");
        let out = d.path().join("a.txt");
        let e = write_atomic_with(&out, |_| Err(std::io::Error::other("boom")));
        assert!(e.is_err());
        assert_eq!(std::fs::read_dir(d.path()).expect("dir").count(), 0);
    }

    #[test]
    fn space_check_reads_limits() {
        let d = tempfile::tempdir().expect("tempdir");
        check_space(&d.path().join("x"), 0, 1).expect("one byte fits");
        let e = check_space(&d.path().join("x"), 0, u64::MAX / 2).expect_err("too big");
        assert!(e.to_string().contains("needs about"), "{e}");
    }
}
