//! Errors of the `.h5ad` reader and writer: every variant names the file and the slot.

use std::path::PathBuf;

use thiserror::Error;

/// An error reading or writing an `.h5ad` file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum H5adError {
    /// The file does not exist or cannot be opened by the OS.
    #[error("{path}: cannot open file: {source}")]
    Open {
        /// File.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The input path is not a regular file (a FIFO, device, socket or directory): refused
    /// before opening it (a FIFO would block forever).
    #[error("{path}: {kind}, not a regular file (refused before opening it)")]
    NotRegularFile {
        /// File.
        path: PathBuf,
        /// What it is (`a FIFO (named pipe)`, `a directory`, ...).
        kind: &'static str,
    },
    /// A dataset declares far more data than the file can plausibly hold (a crafted or
    /// corrupt file): refused before allocating.
    #[error("{path}: slot `{slot}` declares shape {shape:?}, {} uncompressed, more than the bound of {} (1000 x {}, and at least 1 GiB); refusing to read it. If the file really holds that much (a highly compressed dataset), set CELLFATE_ALLOW_LARGE=1 (or pass --allow-large to cellfate)", human_bytes(*.bytes), human_bytes(*.bound), stored.map_or_else(|| format!("the file's {}", human_bytes(*file_len)), |b| format!("the {} the dataset has stored", human_bytes(b))))]
    TooLarge {
        /// File.
        path: PathBuf,
        /// Slot.
        slot: String,
        /// The declared shape.
        shape: Vec<usize>,
        /// Its uncompressed size in bytes.
        bytes: u64,
        /// The largest size allowed for this file.
        bound: u64,
        /// The file's size in bytes.
        file_len: u64,
        /// The bytes the dataset has stored in the file, when they (not the file's size) set
        /// the bound: a chunked dataset whose chunks were never written reads as fill values
        /// of any declared size from a few bytes.
        stored: Option<u64>,
    },
    /// The file is empty.
    #[error("{path}: file is empty (0 bytes); expected an HDF5 (.h5ad) file")]
    Empty {
        /// File.
        path: PathBuf,
    },
    /// The file is not HDF5 at all.
    #[error(
        "{path}: not an HDF5 file (no HDF5 signature); expected an .h5ad file written by anndata"
    )]
    NotHdf5 {
        /// File.
        path: PathBuf,
    },
    /// HDF5 could not open the file although it has the signature (e.g. truncated).
    #[error("{path}: HDF5 cannot open the file (truncated or corrupt?): {message}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// HDF5's message.
        message: String,
    },
    /// A slot the caller asked for is absent.
    #[error("{path}: slot `{slot}` not found{}", available_hint(.available))]
    Missing {
        /// File.
        path: PathBuf,
        /// Slot (HDF5 path), e.g. `obsp/connectivities`.
        slot: String,
        /// What the parent group holds instead.
        available: Vec<String>,
    },
    /// A slot exists but is not what was expected.
    #[error("{path}: slot `{slot}`: expected {expected}, found {found}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Slot.
        slot: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// An encoding this reader does not implement.
    #[error("{path}: slot `{slot}`: unsupported encoding `{encoding}` (supported: array, csr_matrix, csc_matrix, string-array, categorical, nullable-integer, nullable-boolean, nullable-string-array, dataframe, dict, raw, string, numeric-scalar)")]
    Unsupported {
        /// File.
        path: PathBuf,
        /// Slot.
        slot: String,
        /// The encoding-type found.
        encoding: String,
    },
    /// An error reported by the HDF5 library while accessing a slot.
    #[error("{path}: slot `{slot}`: HDF5 error: {source}")]
    Hdf5 {
        /// File.
        path: PathBuf,
        /// Slot.
        slot: String,
        /// HDF5 error.
        source: hdf5::Error,
    },
    /// A file-system error while writing the output.
    #[error("{path}: {op}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// The file draws data from other files (external links, external storage, virtual
    /// datasets): refused, never followed or copied.
    #[error("{path}: slot `{slot}` is {what}; refusing to read data from outside the file (store the data in the file itself, e.g. by saving it again with anndata)")]
    OutsideData {
        /// File.
        path: PathBuf,
        /// Slot.
        slot: String,
        /// What it is.
        what: String,
    },
    /// The output cannot be written (a special file, a missing directory, no space, ...).
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// The caller asked to overwrite the input without saying so explicitly.
    #[error("{path}: output is the input file; pass in-place explicitly to modify the input")]
    WouldOverwriteInput {
        /// File.
        path: PathBuf,
    },
}

/// `1.5 GB`-style sizes (decimal units), exact bytes below 1 kB.
fn human_bytes(b: u64) -> String {
    let x = b as f64;
    if x >= 1e9 {
        format!("{:.1} GB", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} MB", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} kB", x / 1e3)
    } else {
        format!("{b} bytes")
    }
}

fn available_hint(available: &[String]) -> String {
    if available.is_empty() {
        String::new()
    } else {
        let mut shown: Vec<&str> = available.iter().map(String::as_str).take(20).collect();
        if available.len() > 20 {
            shown.push("...");
        }
        format!(" (available: {})", shown.join(", "))
    }
}
