//! Compression of the datasets cellfate writes (HDF5's shuffle + gzip filters, which anndata,
//! h5py and every HDF5 reader decode without plugins).
//!
//! Off by default, as anndata's `write_h5ad`. One setting for the process
//! ([`set_compression`]; the CLI's `--compression`, TOML `compression`), applied to every
//! numeric dataset of at least [`MIN_COMPRESSED_ELEMENTS`] elements that a writer creates.
//! Slots copied unchanged from the input keep their stored encoding (copied raw, not decoded).

use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How new datasets are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Compression {
    /// Uncompressed (anndata's default).
    #[default]
    None,
    /// Byte shuffle, then gzip (deflate) at this level, 1 (fastest) to 9 (smallest).
    Gzip(u8),
}

/// gzip level of `gzip` without a level (h5py's default).
pub const DEFAULT_GZIP_LEVEL: u8 = 4;

/// Datasets smaller than this are stored uncompressed (a chunk index costs more than it saves).
pub const MIN_COMPRESSED_ELEMENTS: usize = 4096;

/// Elements per chunk of a compressed dataset (about 1 MB of float32).
const CHUNK_ELEMENTS: usize = 1 << 18;

/// Why a compression setting does not parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("compression {0:?}: expected none, gzip or gzip:LEVEL with LEVEL 1 to 9")]
pub struct CompressionParseError(pub String);

impl std::str::FromStr for Compression {
    type Err = CompressionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CompressionParseError(s.to_string());
        match s.trim() {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip(DEFAULT_GZIP_LEVEL)),
            other => {
                let level = other.strip_prefix("gzip:").ok_or_else(bad)?;
                match level.parse::<u8>() {
                    Ok(l @ 1..=9) => Ok(Self::Gzip(l)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Gzip(l) => write!(f, "gzip:{l}"),
        }
    }
}

impl TryFrom<String> for Compression {
    type Error = CompressionParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Compression> for String {
    fn from(c: Compression) -> Self {
        c.to_string()
    }
}

/// 0: none; 1–9: the gzip level.
static COMPRESSION: AtomicU8 = AtomicU8::new(0);

/// Sets how every writer of this process stores the datasets it creates from now on.
pub fn set_compression(c: Compression) {
    let code = match c {
        Compression::None => 0,
        Compression::Gzip(l) => l.clamp(1, 9),
    };
    COMPRESSION.store(code, Ordering::Relaxed);
}

/// The current setting (see [`set_compression`]).
pub fn compression() -> Compression {
    match COMPRESSION.load(Ordering::Relaxed) {
        0 => Compression::None,
        l => Compression::Gzip(l),
    }
}

/// The gzip level for a new dataset of `shape`, if it is to be compressed.
pub(super) fn level_for(shape: &[usize]) -> Option<u8> {
    match compression() {
        Compression::None => None,
        Compression::Gzip(l) => {
            let n: usize = shape.iter().product();
            (!shape.is_empty() && n >= MIN_COMPRESSED_ELEMENTS).then_some(l)
        }
    }
}

/// A chunk shape of about [`CHUNK_ELEMENTS`] elements for `shape` (whole trailing
/// dimensions, a block of the first).
pub(super) fn chunk_for(shape: &[usize]) -> Vec<usize> {
    let rest: usize = shape[1..].iter().product::<usize>().max(1);
    let mut chunk = shape.to_vec();
    chunk[0] = (CHUNK_ELEMENTS / rest).clamp(1, shape[0].max(1));
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_print() {
        assert_eq!("none".parse(), Ok(Compression::None));
        assert_eq!("gzip".parse(), Ok(Compression::Gzip(DEFAULT_GZIP_LEVEL)));
        assert_eq!("gzip:9".parse(), Ok(Compression::Gzip(9)));
        for bad in ["gzip:0", "gzip:10", "lzf", "", "gzip:x"] {
            let e = bad.parse::<Compression>().unwrap_err();
            assert!(e.to_string().contains("expected none, gzip"), "{e}");
        }
        assert_eq!(Compression::Gzip(6).to_string(), "gzip:6");
        assert_eq!(chunk_for(&[1_000_000, 30]), vec![8738, 30]);
        assert_eq!(chunk_for(&[100]), vec![100]);
        assert_eq!(chunk_for(&[3, 1_000_000]), vec![1, 1_000_000]);
    }
}
