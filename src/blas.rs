//! OpenBLAS's own threads. cellfate parallelises with rayon (`--threads`); OpenBLAS, when it
//! is the BLAS the process loaded, also starts one thread per core at load time, and after
//! each call those threads spin (`sched_yield`) waiting for more work, on the cores rayon's
//! workers need. Measured on 20,000 cells × 200 genes (`velocity --mode dynamical`, one run
//! each, without `OPENBLAS_NUM_THREADS`): with `--threads 1`, the same wall time but 87.5 s
//! of CPU instead of 70.4 s (the spinning used the idle core); on both cores 40.6 s wall
//! instead of 39.1 s. Every benchmark here runs with `OPENBLAS_NUM_THREADS=1`;
//! [`single_threaded_blas`] makes that the default.

/// Sets OpenBLAS to one thread unless the user chose (`OPENBLAS_NUM_THREADS` or
/// `OMP_NUM_THREADS` set). Looks the function up at run time, so nothing changes when the
/// BLAS is not OpenBLAS. Returns whether it was set.
pub fn single_threaded_blas() -> bool {
    let chosen = std::env::var_os("OPENBLAS_NUM_THREADS").is_some()
        || std::env::var_os("OMP_NUM_THREADS").is_some();
    !chosen && set_openblas_threads(1)
}

/// `openblas_set_num_threads(n)` when OpenBLAS is loaded; whether it was.
#[allow(unsafe_code)] // a C function looked up by name
fn set_openblas_threads(n: libc::c_int) -> bool {
    // SAFETY: dlsym with a NUL-terminated name only reads; a null result means absent.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"openblas_set_num_threads".as_ptr()) };
    if f.is_null() {
        return false;
    }
    // SAFETY: OpenBLAS declares `void openblas_set_num_threads(int num_threads)`.
    let set: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(f) };
    set(n);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenBLAS's thread count, when OpenBLAS is loaded.
    #[allow(unsafe_code)] // a C function looked up by name
    fn openblas_threads() -> Option<libc::c_int> {
        // SAFETY: as in `set_openblas_threads`.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"openblas_get_num_threads".as_ptr()) };
        if f.is_null() {
            return None;
        }
        // SAFETY: OpenBLAS declares `int openblas_get_num_threads(void)`.
        let get: extern "C" fn() -> libc::c_int = unsafe { std::mem::transmute(f) };
        Some(get())
    }

    #[test]
    fn openblas_gets_one_thread_and_a_user_choice_is_kept() {
        // Make sure BLAS is loaded and used (a 2 × 2 real Schur form through LAPACK).
        let (q, ev) =
            cellfate_estimators::schur::dominant_schur_op(2, 1, Default::default(), &|x| {
                vec![2.0 * x[0], x[0] + x[1]]
            })
            .expect("schur");
        assert_eq!((q.nrows(), ev[0]), (2, (2.0, 0.0)));
        let loaded = set_openblas_threads(1);
        assert_eq!(loaded, openblas_threads().is_some());
        if loaded {
            assert_eq!(openblas_threads(), Some(1));
        }
        // `.ci/run` sets OPENBLAS_NUM_THREADS: then the user's choice stands.
        if std::env::var_os("OPENBLAS_NUM_THREADS").is_some() {
            assert!(!single_threaded_blas());
        }
    }
}
