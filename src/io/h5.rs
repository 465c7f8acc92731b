//! Low-level HDF5 helpers shared by the writers ([`super::write`], [`super::stream`]): the
//! private temporary output next to the target, encoding attributes, and one element written in
//! the anndata ≥ 0.8 layout. Imports neither writer, so the writers do not import each other's
//! internals.

use std::path::Path;

use hdf5::types::VarLenUnicode;
use hdf5::{Group, Location};

use super::compression::{chunk_for, level_for};
use super::error::H5adError;
use crate::output::TempOutput;

use super::element::{
    Categorical, Categories, DataFrame, Element, NumVec, SparseArray, SparseFormat,
};

/// Creates the private temporary output of `output`: exclusively (`O_EXCL`), under an
/// unpredictable name next to it (see [`crate::output`]). Its close is "strong" (closing the
/// file closes every object still open in it), and HDF5 file locking is off for it: the file
/// is ours alone until the rename, and a lock would otherwise be inherited by any child
/// process spawned meanwhile (HDF5 does not open with `O_CLOEXEC`), blocking later readers of
/// the renamed output. The temporary file is removed when the [`TempOutput`] is dropped
/// without being persisted.
pub(super) fn create_temp_h5(output: &Path) -> Result<(hdf5::File, TempOutput), H5adError> {
    let (file, tmp) = TempOutput::create(output, |p| {
        hdf5::File::with_options()
            .with_fapl(|f| {
                f.fclose_degree(hdf5::file::FileCloseDegree::Strong)
                    .file_locking(false)
            })
            .create_excl(p)
            .map_err(|e| {
                if std::fs::symlink_metadata(p).is_ok() {
                    std::io::Error::from(std::io::ErrorKind::AlreadyExists)
                } else {
                    std::io::Error::other(e.to_string())
                }
            })
    })?;
    Ok((file, tmp))
}

// ----- element writers (HDF5 level) ------------------------------------------------------

fn vlu(s: &str) -> hdf5::Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>()
        .map_err(|e| hdf5::Error::from(format!("string {s:?} cannot be stored: {e}")))
}

fn str_attr(loc: &Location, name: &str, value: &str) -> hdf5::Result<()> {
    if loc.attr(name).is_ok() {
        loc.delete_attr(name)?;
    }
    loc.new_attr::<VarLenUnicode>()
        .shape(())
        .create(name)?
        .write_scalar(&vlu(value)?)
}

pub(super) fn set_encoding(loc: &Location, enc: &str, version: &str) -> hdf5::Result<()> {
    str_attr(loc, "encoding-type", enc)?;
    str_attr(loc, "encoding-version", version)
}

fn write_num(g: &Group, name: &str, shape: &[usize], data: &NumVec) -> hdf5::Result<hdf5::Dataset> {
    macro_rules! w {
        ($t:ty, $v:expr) => {{
            let b = g.new_dataset::<$t>();
            let ds = if shape.is_empty() {
                b.shape(()).create(name)?
            } else if let Some(level) = level_for(shape) {
                b.chunk(chunk_for(shape))
                    .shuffle()
                    .deflate(level)
                    .shape(shape.to_vec())
                    .create(name)?
            } else {
                b.shape(shape.to_vec()).create(name)?
            };
            if !$v.is_empty() {
                ds.write_raw($v.as_slice())?;
            }
            ds
        }};
    }
    Ok(match data {
        NumVec::Bool(v) => w!(bool, v),
        NumVec::I8(v) => w!(i8, v),
        NumVec::I16(v) => w!(i16, v),
        NumVec::I32(v) => w!(i32, v),
        NumVec::I64(v) => w!(i64, v),
        NumVec::U8(v) => w!(u8, v),
        NumVec::U16(v) => w!(u16, v),
        NumVec::U32(v) => w!(u32, v),
        NumVec::U64(v) => w!(u64, v),
        NumVec::F32(v) => w!(f32, v),
        NumVec::F64(v) => w!(f64, v),
        NumVec::C128(v) => w!(num_complex::Complex64, v),
    })
}

fn write_strs(
    g: &Group,
    name: &str,
    shape: &[usize],
    values: &[String],
) -> hdf5::Result<hdf5::Dataset> {
    let v: Vec<VarLenUnicode> = values.iter().map(|s| vlu(s)).collect::<hdf5::Result<_>>()?;
    let b = g.new_dataset::<VarLenUnicode>();
    let ds = if shape.is_empty() {
        b.shape(()).create(name)?
    } else {
        b.shape(shape.to_vec()).create(name)?
    };
    if !v.is_empty() {
        ds.write_raw(&v)?;
    }
    Ok(ds)
}

/// scipy's choice of index dtype: int32 when every index fits, int64 otherwise.
fn index_vec(values: impl Iterator<Item = usize>, max: usize) -> NumVec {
    if max < i32::MAX as usize {
        NumVec::I32(values.map(|i| i as i32).collect())
    } else {
        NumVec::I64(values.map(|i| i as i64).collect())
    }
}

fn write_sparse(g: &Group, name: &str, s: &SparseArray) -> hdf5::Result<()> {
    let sg = g.create_group(name)?;
    set_encoding(&sg, s.format.encoding(), "0.1.0")?;
    sg.new_attr::<i64>()
        .shape(2)
        .create("shape")?
        .write_raw(&[s.shape[0] as i64, s.shape[1] as i64])?;
    write_num(&sg, "data", &[s.data.len()], &s.data)?;
    let minor = match s.format {
        SparseFormat::Csr => s.shape[1],
        SparseFormat::Csc => s.shape[0],
    };
    let max = minor.max(s.indices.len());
    let idx = index_vec(s.indices.iter().map(|&i| i as usize), max);
    write_num(&sg, "indices", &[s.indices.len()], &idx)?;
    let ptr = index_vec(s.indptr.iter().copied(), max);
    write_num(&sg, "indptr", &[s.indptr.len()], &ptr)?;
    Ok(())
}

fn write_categorical(g: &Group, name: &str, c: &Categorical) -> hdf5::Result<()> {
    let cg = g.create_group(name)?;
    set_encoding(&cg, "categorical", "0.2.0")?;
    cg.new_attr::<bool>()
        .shape(())
        .create("ordered")?
        .write_scalar(&c.ordered)?;
    let n = c.categories.len();
    let codes = if n < 128 {
        NumVec::I8(c.codes.iter().map(|&x| x as i8).collect())
    } else if n < 32768 {
        NumVec::I16(c.codes.iter().map(|&x| x as i16).collect())
    } else {
        NumVec::I32(c.codes.clone())
    };
    let ds = write_num(&cg, "codes", &[c.codes.len()], &codes)?;
    set_encoding(&ds, "array", "0.2.0")?;
    let ds = match &c.categories {
        Categories::Str(v) => {
            let ds = write_strs(&cg, "categories", &[v.len()], v)?;
            set_encoding(&ds, "string-array", "0.2.0")?;
            ds
        }
        Categories::Num(v) => {
            let ds = write_num(&cg, "categories", &[v.len()], v)?;
            set_encoding(&ds, "array", "0.2.0")?;
            ds
        }
    };
    drop(ds);
    Ok(())
}

pub(super) fn write_dataframe(g: &Group, name: &str, df: &DataFrame) -> hdf5::Result<()> {
    let dg = g.create_group(name)?;
    set_encoding(&dg, "dataframe", "0.2.0")?;
    str_attr(&dg, "_index", &df.index_name)?;
    if df.columns.is_empty() {
        // anndata writes an empty float64 array for an empty column order.
        dg.new_attr::<f64>().shape(0).create("column-order")?;
    } else {
        let names: Vec<VarLenUnicode> = df
            .columns
            .iter()
            .map(|(n, _)| vlu(n))
            .collect::<hdf5::Result<_>>()?;
        dg.new_attr::<VarLenUnicode>()
            .shape(names.len())
            .create("column-order")?
            .write_raw(&names)?;
    }
    let ds = write_strs(&dg, &df.index_name, &[df.index.len()], &df.index)?;
    set_encoding(&ds, "string-array", "0.2.0")?;
    for (cname, col) in &df.columns {
        if cname == &df.index_name {
            return Err(hdf5::Error::from(format!(
                "column `{cname}` has the same name as the index"
            )));
        }
        write_element(&dg, cname, col)?;
    }
    Ok(())
}

fn write_members(
    g: &Group,
    name: &str,
    enc: &str,
    members: &[(String, Element)],
) -> hdf5::Result<()> {
    let mg = g.create_group(name)?;
    set_encoding(&mg, enc, "0.1.0")?;
    for (n, e) in members {
        write_element(&mg, n, e)?;
    }
    Ok(())
}

/// Writes one element under `g/name` in the anndata ≥ 0.8 layout.
pub(super) fn write_element(g: &Group, name: &str, el: &Element) -> hdf5::Result<()> {
    if g.link_exists(name) {
        g.unlink(name)?;
    }
    match el {
        Element::Dense(d) => {
            let ds = write_num(g, name, &d.shape, &d.data)?;
            set_encoding(&ds, "array", "0.2.0")
        }
        Element::Sparse(s) => write_sparse(g, name, s),
        Element::Strings { shape, values } => {
            let ds = write_strs(g, name, shape, values)?;
            set_encoding(&ds, "string-array", "0.2.0")
        }
        Element::Str(s) => {
            let ds = write_strs(g, name, &[], std::slice::from_ref(s))?;
            set_encoding(&ds, "string", "0.2.0")
        }
        Element::Scalar(v) => {
            let ds = write_num(g, name, &[], v)?;
            set_encoding(&ds, "numeric-scalar", "0.2.0")
        }
        Element::Categorical(c) => write_categorical(g, name, c),
        Element::NullableInt { values, mask } => {
            let ng = g.create_group(name)?;
            set_encoding(&ng, "nullable-integer", "0.1.0")?;
            write_num(&ng, "values", &[values.len()], values)?;
            write_num(&ng, "mask", &[mask.len()], &NumVec::Bool(mask.clone()))?;
            Ok(())
        }
        Element::NullableBool { values, mask } => {
            let ng = g.create_group(name)?;
            set_encoding(&ng, "nullable-boolean", "0.1.0")?;
            write_num(
                &ng,
                "values",
                &[values.len()],
                &NumVec::Bool(values.clone()),
            )?;
            write_num(&ng, "mask", &[mask.len()], &NumVec::Bool(mask.clone()))?;
            Ok(())
        }
        Element::NullableStr { values, mask } => {
            let ng = g.create_group(name)?;
            set_encoding(&ng, "nullable-string-array", "0.1.0")?;
            write_strs(&ng, "values", &[values.len()], values)?;
            write_num(&ng, "mask", &[mask.len()], &NumVec::Bool(mask.clone()))?;
            Ok(())
        }
        Element::DataFrame(df) => write_dataframe(g, name, df),
        Element::Dict(m) => write_members(g, name, "dict", m),
        Element::Raw(m) => write_members(g, name, "raw", m),
        Element::AnnData(m) => write_members(g, name, "anndata", m),
    }
}
