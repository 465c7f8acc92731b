//! Binary save/load of a computed kernel (its effective spec and its transition matrix):
//! a magic header, a format version, then bincode 2 (`standard` configuration). Bytes only:
//! writing files is the caller's business.

use serde::{Deserialize, Serialize};

use crate::error::KernelError;
use crate::kernel::{KernelOutput, KernelSpec};
use crate::transition::TransitionMatrix;

/// Magic bytes at the start of a saved kernel.
pub const MAGIC: [u8; 8] = *b"CFKERNEL";
/// Current format version; loading another version is an error that names both.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Header {
    magic: [u8; 8],
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// The effective spec as JSON (internally tagged enums need a self-describing format).
    spec_json: String,
    transition: TransitionMatrix,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Serialises a computed kernel.
pub fn to_bytes(k: &KernelOutput) -> Result<Vec<u8>, KernelError> {
    let mut out = bincode::serde::encode_to_vec(
        Header {
            magic: MAGIC,
            version: FORMAT_VERSION,
        },
        config(),
    )
    .map_err(|e| KernelError::Encode {
        part: "header",
        reason: e.to_string(),
    })?;
    let payload = Payload {
        spec_json: k.effective.to_json(),
        transition: k.transition.clone(),
    };
    out.extend(
        bincode::serde::encode_to_vec(&payload, config()).map_err(|e| KernelError::Encode {
            part: "payload",
            reason: e.to_string(),
        })?,
    );
    Ok(out)
}

/// Loads a kernel saved by [`to_bytes`], validating the header, the spec and the matrix.
pub fn from_bytes(bytes: &[u8]) -> Result<KernelOutput, KernelError> {
    let (h, used): (Header, usize) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|_| {
            KernelError::NotAKernelFile {
                reason: "too short for a header",
            }
        })?;
    if h.magic != MAGIC {
        return Err(KernelError::NotAKernelFile {
            reason: "wrong magic bytes",
        });
    }
    if h.version != FORMAT_VERSION {
        return Err(KernelError::FormatVersion {
            found: h.version,
            supported: FORMAT_VERSION,
        });
    }
    let (p, _): (Payload, usize) = bincode::serde::decode_from_slice(&bytes[used..], config())
        .map_err(|e| KernelError::CorruptKernelFile {
            part: "payload",
            reason: e.to_string(),
        })?;
    let effective = KernelSpec::from_json(&p.spec_json)?;
    Ok(KernelOutput {
        transition: p.transition,
        effective,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::toy_cells;
    use crate::{ConnectivityParams, Kernel, VelocityParams};

    #[test]
    fn round_trip_exact_and_errors() {
        let c = toy_cells(120, 20, 8, 1);
        let k = 0.8 * VelocityParams::default() + 0.2 * ConnectivityParams::default();
        let out = k.compute(&c).unwrap();
        let bytes = to_bytes(&out).unwrap();
        assert_eq!(from_bytes(&bytes).unwrap(), out);
        // Truncated, wrong magic, wrong version: errors, not panics.
        assert!(from_bytes(&bytes[..bytes.len() / 2]).is_err());
        assert!(from_bytes(b"hello world, not a kernel").is_err());
        let header = |version| {
            bincode::serde::encode_to_vec(
                Header {
                    magic: MAGIC,
                    version,
                },
                config(),
            )
            .unwrap()
        };
        let mut v2 = header(99);
        v2.extend_from_slice(&bytes[header(FORMAT_VERSION).len()..]);
        let e = from_bytes(&v2).unwrap_err();
        assert_eq!(
            e,
            KernelError::FormatVersion {
                found: 99,
                supported: FORMAT_VERSION
            }
        );
        assert!(e.to_string().contains("version 99"), "{e}");
        assert!(matches!(
            from_bytes(b"hello world, not a kernel"),
            Err(KernelError::NotAKernelFile { .. })
        ));
    }
}
