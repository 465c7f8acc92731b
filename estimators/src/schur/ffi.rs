//! Minimal FFI to the system LAPACK (`dgees`, `dtrsen`) and ARPACK (`dnaupd_c`, `dneupd_c`).
//! Every call goes through a safe wrapper that checks buffer sizes before crossing the
//! boundary; these are the only `unsafe` blocks of the crate.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

use super::error::SchurError;

type SelectFn = Option<extern "C" fn(*const f64, *const f64) -> c_int>;

unsafe extern "C" {
    fn dgees_(
        jobvs: *const c_char,
        sort: *const c_char,
        select: SelectFn,
        n: *const c_int,
        a: *mut f64,
        lda: *const c_int,
        sdim: *mut c_int,
        wr: *mut f64,
        wi: *mut f64,
        vs: *mut f64,
        ldvs: *const c_int,
        work: *mut f64,
        lwork: *const c_int,
        bwork: *mut c_int,
        info: *mut c_int,
        jobvs_len: usize,
        sort_len: usize,
    );
    fn dtrsen_(
        job: *const c_char,
        compq: *const c_char,
        select: *const c_int,
        n: *const c_int,
        t: *mut f64,
        ldt: *const c_int,
        q: *mut f64,
        ldq: *const c_int,
        wr: *mut f64,
        wi: *mut f64,
        m: *mut c_int,
        s: *mut f64,
        sep: *mut f64,
        work: *mut f64,
        lwork: *const c_int,
        iwork: *mut c_int,
        liwork: *const c_int,
        info: *mut c_int,
        job_len: usize,
        compq_len: usize,
    );
    fn dnaupd_c(
        ido: *mut c_int,
        bmat: *const c_char,
        n: c_int,
        which: *const c_char,
        nev: c_int,
        tol: f64,
        resid: *mut f64,
        ncv: c_int,
        v: *mut f64,
        ldv: c_int,
        iparam: *mut c_int,
        ipntr: *mut c_int,
        workd: *mut f64,
        workl: *mut f64,
        lworkl: c_int,
        info: *mut c_int,
    );
    fn dneupd_c(
        rvec: c_int,
        howmny: *const c_char,
        select: *const c_int,
        dr: *mut f64,
        di: *mut f64,
        z: *mut f64,
        ldz: c_int,
        sigmar: f64,
        sigmai: f64,
        workev: *mut f64,
        bmat: *const c_char,
        n: c_int,
        which: *const c_char,
        nev: c_int,
        tol: f64,
        resid: *mut f64,
        ncv: c_int,
        v: *mut f64,
        ldv: c_int,
        iparam: *mut c_int,
        ipntr: *mut c_int,
        workd: *mut f64,
        workl: *mut f64,
        lworkl: c_int,
        info: *mut c_int,
    );
}

fn to_int(n: usize) -> Result<c_int, SchurError> {
    c_int::try_from(n).map_err(|_| SchurError::DimensionOverflow { dimension: n })
}

/// Real Schur form `A = Z T Zᵀ` of a column-major `n × n` matrix (overwritten with `T`).
/// Returns `(Z, wr, wi)`.
/// Schur vectors `Z` (column-major) and the real and imaginary parts of the eigenvalues.
pub(crate) type SchurParts = (Vec<f64>, Vec<f64>, Vec<f64>);

pub(crate) fn dgees(n: usize, a: &mut [f64]) -> Result<SchurParts, SchurError> {
    assert_eq!(a.len(), n * n, "dgees: matrix size");
    let ni = to_int(n)?;
    let lda = ni.max(1);
    let mut sdim = 0;
    let mut wr = vec![0.0; n];
    let mut wi = vec![0.0; n];
    let mut vs = vec![0.0; n * n];
    let mut bwork = vec![0; n.max(1)];
    let mut info = 0;
    let mut query = [0.0f64];
    let minus1: c_int = -1;
    // SAFETY: all buffers have the sizes LAPACK documents for n, lda = ldvs = n; the
    // workspace query writes one value into `query`.
    unsafe {
        dgees_(
            c"V".as_ptr(),
            c"N".as_ptr(),
            None,
            &ni,
            a.as_mut_ptr(),
            &lda,
            &mut sdim,
            wr.as_mut_ptr(),
            wi.as_mut_ptr(),
            vs.as_mut_ptr(),
            &lda,
            query.as_mut_ptr(),
            &minus1,
            bwork.as_mut_ptr(),
            &mut info,
            1,
            1,
        );
    }
    if info != 0 {
        return Err(SchurError::Lapack {
            routine: "dgees (workspace query)",
            info,
        });
    }
    let lwork = (query[0] as usize).max(3 * n).max(1);
    let lwi = to_int(lwork)?;
    let mut work = vec![0.0; lwork];
    // SAFETY: as above, with a workspace of the size LAPACK asked for.
    unsafe {
        dgees_(
            c"V".as_ptr(),
            c"N".as_ptr(),
            None,
            &ni,
            a.as_mut_ptr(),
            &lda,
            &mut sdim,
            wr.as_mut_ptr(),
            wi.as_mut_ptr(),
            vs.as_mut_ptr(),
            &lda,
            work.as_mut_ptr(),
            &lwi,
            bwork.as_mut_ptr(),
            &mut info,
            1,
            1,
        );
    }
    if info != 0 {
        return Err(SchurError::Lapack {
            routine: "dgees",
            info,
        });
    }
    Ok((vs, wr, wi))
}

/// Reorders the real Schur form (`t`, `q`, column-major `n × n`) so that the eigenvalues with
/// `select[k]` come first (relative order kept). Updates `wr`, `wi`.
pub(crate) fn dtrsen(
    n: usize,
    t: &mut [f64],
    q: &mut [f64],
    select: &[bool],
    wr: &mut [f64],
    wi: &mut [f64],
) -> Result<(), SchurError> {
    assert!(
        t.len() == n * n && q.len() == n * n && select.len() == n && wr.len() == n && wi.len() == n
    );
    let ni = to_int(n)?;
    let ld = ni.max(1);
    let sel: Vec<c_int> = select.iter().map(|&b| c_int::from(b)).collect();
    let mut m = 0;
    let (mut s, mut sep) = (0.0, 0.0);
    let mut info = 0;
    let lwork = n.max(1);
    let lwi = to_int(lwork)?;
    let mut work = vec![0.0; lwork];
    let mut iwork = vec![0 as c_int; 1];
    let liwork: c_int = 1;
    // SAFETY: job = 'N' needs lwork >= max(1, n) and liwork >= 1; all arrays sized for n.
    unsafe {
        dtrsen_(
            c"N".as_ptr(),
            c"V".as_ptr(),
            sel.as_ptr(),
            &ni,
            t.as_mut_ptr(),
            &ld,
            q.as_mut_ptr(),
            &ld,
            wr.as_mut_ptr(),
            wi.as_mut_ptr(),
            &mut m,
            &mut s,
            &mut sep,
            work.as_mut_ptr(),
            &lwi,
            iwork.as_mut_ptr(),
            &liwork,
            &mut info,
            1,
            1,
        );
    }
    if info != 0 {
        return Err(SchurError::Lapack {
            routine: "dtrsen",
            info,
        });
    }
    Ok(())
}

/// Result of ARPACK's implicitly restarted Arnoldi iteration.
pub(crate) struct ArpackResult {
    /// Orthonormal Schur vectors, column-major `n × nconv`.
    pub(crate) q: Vec<f64>,
    /// Number of converged Ritz values.
    pub(crate) nconv: usize,
    /// Number of Arnoldi restarts used.
    pub(crate) iterations: usize,
    /// Number of matrix-vector products.
    pub(crate) matvecs: usize,
}

/// Partial real Schur vectors of the operator `op` (`y = A x`) with ARPACK (`dnaupd` +
/// `dneupd(howmny = 'P')`). `which` is ARPACK's `c"LR"` or `c"LM"`; `resid` is the starting
/// vector.
/// ARPACK keeps its reverse-communication state in Fortran SAVE variables: two runs at once
/// (e.g. from two threads) would corrupt each other, so every run holds this lock.
static ARPACK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[allow(clippy::too_many_arguments)]
pub(crate) fn arpack_schur(
    n: usize,
    nev: usize,
    ncv: usize,
    which_c: &CStr,
    tol: f64,
    max_iter: usize,
    mut resid: Vec<f64>,
    op: &mut dyn FnMut(&[f64], &mut [f64]),
) -> Result<ArpackResult, SchurError> {
    assert_eq!(resid.len(), n, "arpack: resid length");
    if !(nev >= 1 && nev + 2 <= ncv && ncv <= n) {
        return Err(SchurError::ArpackDimensions { n, nev, ncv });
    }
    let _guard = ARPACK_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (ni, nevi, ncvi) = (to_int(n)?, to_int(nev)?, to_int(ncv)?);
    let lworkl = 3 * ncv * ncv + 6 * ncv;
    let mut v = vec![0.0; n * ncv];
    let mut iparam = [0 as c_int; 11];
    iparam[0] = 1;
    iparam[2] = to_int(max_iter)?;
    iparam[6] = 1;
    let mut ipntr = [0 as c_int; 14];
    let mut workd = vec![0.0; 3 * n];
    let mut workl = vec![0.0; lworkl];
    let mut info: c_int = 1; // use `resid` as the starting vector
    let mut ido: c_int = 0;
    let mut matvecs = 0usize;
    let mut x = vec![0.0; n];
    let mut y = vec![0.0; n];
    // The number of products is not known in advance: a total of 0.
    cellfate_kernels::progress::start("Schur: ARPACK matrix-vector products", 0);
    loop {
        // SAFETY: buffers sized as dnaupd documents: v n×ncv, workd 3n, workl 3ncv²+6ncv,
        // iparam 11, ipntr 14, resid n.
        unsafe {
            dnaupd_c(
                &mut ido,
                c"I".as_ptr(),
                ni,
                which_c.as_ptr(),
                nevi,
                tol,
                resid.as_mut_ptr(),
                ncvi,
                v.as_mut_ptr(),
                ni,
                iparam.as_mut_ptr(),
                ipntr.as_mut_ptr(),
                workd.as_mut_ptr(),
                workl.as_mut_ptr(),
                to_int(lworkl)?,
                &mut info,
            );
        }
        if ido == -1 || ido == 1 {
            let (xi, yi) = ((ipntr[0] - 1) as usize, (ipntr[1] - 1) as usize);
            x.copy_from_slice(&workd[xi..xi + n]);
            op(&x, &mut y);
            workd[yi..yi + n].copy_from_slice(&y);
            matvecs += 1;
            cellfate_kernels::progress::advance(1);
            if cellfate_kernels::interrupt::requested() {
                cellfate_kernels::progress::finish();
                return Err(SchurError::Interrupted);
            }
        } else {
            break;
        }
    }
    cellfate_kernels::progress::finish();
    let iterations = iparam[2].max(0) as usize;
    let nconv = iparam[4].max(0) as usize;
    if info == 1 {
        return Err(SchurError::NotConverged {
            converged: nconv,
            requested: nev,
            iterations,
            matvecs,
        });
    }
    if info != 0 {
        return Err(SchurError::Arpack {
            routine: "dnaupd",
            info,
            iterations,
            converged: nconv,
            requested: nev,
        });
    }
    let mut dr = vec![0.0; nev + 1];
    let mut di = vec![0.0; nev + 1];
    let mut z = vec![0.0; n * (nev + 1)];
    let mut workev = vec![0.0; 3 * ncv];
    let select = vec![0 as c_int; ncv];
    // SAFETY: dneupd with the same workspace as dnaupd; dr/di/z sized for nev + 1 (a complex
    // pair can straddle the cut), select has ncv entries (ignored for howmny = 'P').
    unsafe {
        dneupd_c(
            1,
            c"P".as_ptr(),
            select.as_ptr(),
            dr.as_mut_ptr(),
            di.as_mut_ptr(),
            z.as_mut_ptr(),
            ni,
            0.0,
            0.0,
            workev.as_mut_ptr(),
            c"I".as_ptr(),
            ni,
            which_c.as_ptr(),
            nevi,
            tol,
            resid.as_mut_ptr(),
            ncvi,
            v.as_mut_ptr(),
            ni,
            iparam.as_mut_ptr(),
            ipntr.as_mut_ptr(),
            workd.as_mut_ptr(),
            workl.as_mut_ptr(),
            to_int(lworkl)?,
            &mut info,
        );
    }
    if info != 0 {
        return Err(SchurError::Arpack {
            routine: "dneupd",
            info,
            iterations,
            converged: nconv,
            requested: nev,
        });
    }
    let nconv = (iparam[4].max(0) as usize).min(ncv);
    v.truncate(n * nconv);
    Ok(ArpackResult {
        q: v,
        nconv,
        iterations,
        matvecs,
    })
}
