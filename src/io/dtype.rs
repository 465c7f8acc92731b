//! Stored datatypes checked before hdf5-metno describes them.
//!
//! hdf5-metno 0.15 reads each member value of an enum datatype into an 8-byte integer on the
//! stack (`Datatype::to_descriptor`, which every read of an enum-containing dataset or
//! attribute goes through, e.g. the booleans h5py writes) without first checking the enum's
//! size: a damaged file whose enum declares, say, 4,096 bytes makes libhdf5 copy 4,096 bytes
//! over the stack (found by fuzzing: a bit flip in a type message, SIGSEGV in
//! `H5T__get_member_value`). [`check`] walks a datatype with libhdf5's own accessors, which
//! copy nothing, and refuses what hdf5-metno could not describe safely.

use hdf5_sys::h5i::hid_t;
use hdf5_sys::h5t::{
    H5T_class_t, H5Tclose, H5Tget_class, H5Tget_member_type, H5Tget_nmembers, H5Tget_size,
    H5Tget_super,
};

/// Types nested deeper than this are refused (anndata writes at most an enum in an array).
const MAX_DEPTH: usize = 16;
/// Members visited in one datatype, over all levels.
const MAX_MEMBERS: usize = 100_000;

/// `Err(what is wrong)` when the datatype `t` holds something hdf5-metno cannot describe
/// without trusting sizes stored in the file: an enum that is not 1, 2, 4 or 8 bytes, or not
/// over an integer of its size; or nesting beyond [`MAX_DEPTH`] / [`MAX_MEMBERS`].
pub(crate) fn check(t: &hdf5::Datatype) -> Result<(), String> {
    let mut budget = MAX_MEMBERS;
    hdf5::sync::sync(|| walk(t.id(), 0, &mut budget))
}

/// Checks the datatype of every attribute of the object `loc` with [`check`]. The attributes
/// are opened by index through libhdf5 directly: hdf5-metno's attribute listing converts
/// each attribute's stored character set into a Rust enum unchecked, and a damaged value
/// made it format a string of 9·10¹⁵ bytes (found by fuzzing). `Err((index, what))`.
#[allow(unsafe_code)]
pub(crate) fn check_attributes(loc: &hdf5::Location) -> Result<(), (usize, String)> {
    use hdf5_sys::h5::{H5_index_t, H5_iter_order_t};
    use hdf5_sys::h5a::{H5Aclose, H5Aget_type, H5Aopen_by_idx};
    const MAX_ATTRIBUTES: usize = 100_000;
    hdf5::sync::sync(|| {
        for k in 0..MAX_ATTRIBUTES {
            // SAFETY: `loc` is a valid object id; "." names the object itself; the
            // attribute id is closed below. A negative id ends the list (no attribute k).
            let a = unsafe {
                H5Aopen_by_idx(
                    loc.id(),
                    c".".as_ptr(),
                    H5_index_t::H5_INDEX_NAME,
                    H5_iter_order_t::H5_ITER_NATIVE,
                    k as u64,
                    0,
                    0,
                )
            };
            if a < 0 {
                return Ok(());
            }
            // SAFETY: `a` is a valid attribute id; its type id is owned (closed on drop).
            let t = open(unsafe { H5Aget_type(a) }, "type of an attribute");
            let mut budget = MAX_MEMBERS;
            let r = t.and_then(|t| walk(t.0, 0, &mut budget));
            // SAFETY: `a` was opened above and is closed once.
            unsafe {
                H5Aclose(a);
            }
            r.map_err(|what| (k, what))?;
        }
        Err((
            MAX_ATTRIBUTES,
            format!("more than {MAX_ATTRIBUTES} attributes"),
        ))
    })
}

/// A datatype id this module opened, closed when dropped.
struct Owned(hid_t);

impl Drop for Owned {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: `self.0` is a valid datatype id returned by libhdf5 and closed only here.
        unsafe {
            H5Tclose(self.0);
        }
    }
}

fn open(id: hid_t, what: &str) -> Result<Owned, String> {
    if id < 0 {
        Err(format!("libhdf5 cannot open the {what} of a datatype"))
    } else {
        Ok(Owned(id))
    }
}

#[allow(unsafe_code)]
fn walk(id: hid_t, depth: usize, budget: &mut usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "a datatype nested more than {MAX_DEPTH} levels deep"
        ));
    }
    // SAFETY (every call below): `id` is a valid datatype id (from hdf5-metno or opened by
    // this walk and still open); these accessors only read the type's header in memory.
    let class = unsafe { H5Tget_class(id) };
    match class {
        H5T_class_t::H5T_ENUM => {
            let size = unsafe { H5Tget_size(id) };
            if !matches!(size, 1 | 2 | 4 | 8) {
                return Err(format!(
                    "an enum datatype of {size} bytes (booleans and enums are 1 to 8 bytes)"
                ));
            }
            let base = open(unsafe { H5Tget_super(id) }, "base type")?;
            let base_class = unsafe { H5Tget_class(base.0) };
            let base_size = unsafe { H5Tget_size(base.0) };
            if base_class != H5T_class_t::H5T_INTEGER || base_size != size {
                return Err(format!(
                    "an enum datatype of {size} bytes over a base type of class {base_class:?} and {base_size} bytes"
                ));
            }
            Ok(())
        }
        H5T_class_t::H5T_COMPOUND => {
            let n = unsafe { H5Tget_nmembers(id) };
            if n < 0 {
                return Err("a compound datatype whose members libhdf5 cannot count".into());
            }
            for i in 0..n as u32 {
                *budget = budget
                    .checked_sub(1)
                    .ok_or_else(|| format!("a datatype of more than {MAX_MEMBERS} members"))?;
                let m = open(unsafe { H5Tget_member_type(id, i) }, "member type")?;
                walk(m.0, depth + 1, budget)?;
            }
            Ok(())
        }
        H5T_class_t::H5T_ARRAY | H5T_class_t::H5T_VLEN => {
            let base = open(unsafe { H5Tget_super(id) }, "base type")?;
            walk(base.0, depth + 1, budget)
        }
        H5T_class_t::H5T_NO_CLASS => Err("a datatype of no class libhdf5 can name".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anndata_types_pass_and_a_wide_enum_is_refused() {
        for t in [
            hdf5::Datatype::from_type::<bool>().unwrap(),
            hdf5::Datatype::from_type::<f32>().unwrap(),
            hdf5::Datatype::from_type::<i64>().unwrap(),
            hdf5::Datatype::from_type::<hdf5::types::VarLenUnicode>().unwrap(),
            hdf5::Datatype::from_type::<[bool; 3]>().unwrap(),
        ] {
            assert_eq!(check(&t), Ok(()));
        }
        // A 16-byte enum (libhdf5 accepts it; hdf5-metno would copy 16 bytes into 8).
        let id = wide_enum();
        let mut budget = MAX_MEMBERS;
        let e = hdf5::sync::sync(|| walk(id.0, 0, &mut budget)).unwrap_err();
        assert!(e.contains("enum datatype of 16 bytes"), "{e}");
    }

    /// An enum over a 16-byte integer, made with libhdf5's own calls.
    #[allow(unsafe_code)]
    fn wide_enum() -> Owned {
        use hdf5_sys::h5t::{H5Tcopy, H5Tenum_create, H5Tset_size, H5T_STD_U64LE};
        hdf5::sync::sync(|| {
            // SAFETY: plain libhdf5 type constructors on valid ids; the result is closed
            // when the returned `Owned` drops.
            unsafe {
                let base = H5Tcopy(*H5T_STD_U64LE);
                assert!(base >= 0);
                assert!(H5Tset_size(base, 16) >= 0);
                let e = H5Tenum_create(base);
                assert!(e >= 0);
                H5Tclose(base);
                Owned(e)
            }
        })
    }
}
