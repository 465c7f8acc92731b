//! Links the system ARPACK and LAPACK libraries (Debian: libarpack2-dev, liblapack-dev or
//! libopenblas-dev; installed by scripts/setup.sh).
fn main() {
    println!("cargo:rustc-link-lib=arpack");
    println!("cargo:rustc-link-lib=lapack");
    println!("cargo:rustc-link-lib=blas");
    println!("cargo:rerun-if-changed=build.rs");
}
