//! Operator sugar for kernel algebra, as in CellRank, for [`KernelSpec`] and every built-in
//! parameter type: `0.8 * vk + 0.2 * ck` (weighted sums), `vk * ck` (element-wise products),
//! `!vk` (direction flip, CellRank's `~vk`).
//!
//! ```
//! use cellfate_kernels::{ConnectivityParams, Kernel, KernelSpec, LabelingTimeParams};
//! let k: KernelSpec = 0.5 * LabelingTimeParams::default() + 0.5 * ConnectivityParams::default();
//! assert_eq!(k.leaves().len(), 2);
//! k.validate()?;
//! # Ok::<(), cellfate_kernels::KernelError>(())
//! ```
//!
//! A user-defined kernel joins through its spec: `0.7 * my_kernel.spec() + 0.3 * ck`.

use crate::connectivity::ConnectivityParams;
use crate::cytotrace::CytoTraceParams;
use crate::kernel::KernelSpec;
use crate::labeling::LabelingTimeParams;
use crate::precomputed::PrecomputedParams;
use crate::pseudotime::PseudotimeParams;
use crate::real_time::RealTimeParams;
use crate::velocity::VelocityParams;

macro_rules! kernel_ops {
    ($($t:ty),* $(,)?) => {$(
        impl std::ops::Mul<$t> for f64 {
            type Output = KernelSpec;
            /// `w * k`: the kernel with weight `w`, ready to be added to other terms.
            fn mul(self, k: $t) -> KernelSpec {
                KernelSpec::Sum {
                    terms: vec![(self, k.into())],
                }
            }
        }
        impl<R: Into<KernelSpec>> std::ops::Add<R> for $t {
            type Output = KernelSpec;
            fn add(self, r: R) -> KernelSpec {
                KernelSpec::from(self) + r
            }
        }
        impl<R: Into<KernelSpec>> std::ops::Mul<R> for $t {
            type Output = KernelSpec;
            fn mul(self, r: R) -> KernelSpec {
                KernelSpec::from(self) * r
            }
        }
        impl std::ops::Not for $t {
            type Output = KernelSpec;
            fn not(self) -> KernelSpec {
                KernelSpec::from(self).flip()
            }
        }
    )*};
}

kernel_ops!(
    ConnectivityParams,
    PseudotimeParams,
    VelocityParams,
    PrecomputedParams,
    CytoTraceParams,
    LabelingTimeParams,
    RealTimeParams,
);

impl std::ops::Mul<KernelSpec> for f64 {
    type Output = KernelSpec;
    fn mul(self, k: KernelSpec) -> KernelSpec {
        KernelSpec::sum(vec![(self, k)])
    }
}

impl<R: Into<KernelSpec>> std::ops::Add<R> for KernelSpec {
    type Output = KernelSpec;
    /// Adds two expressions. A bare kernel counts with weight 1; a single scaled term
    /// (`0.8 * k`) keeps its weight.
    fn add(self, r: R) -> KernelSpec {
        let as_terms = |k: KernelSpec| match k {
            KernelSpec::Sum { terms } => terms,
            other => vec![(1.0, other)],
        };
        let mut terms = as_terms(self);
        terms.extend(as_terms(r.into()));
        KernelSpec::Sum { terms }
    }
}

impl<R: Into<KernelSpec>> std::ops::Mul<R> for KernelSpec {
    type Output = KernelSpec;
    /// The element-wise product of two expressions (flattened).
    fn mul(self, r: R) -> KernelSpec {
        KernelSpec::product(vec![self, r.into()])
    }
}

impl std::ops::Not for KernelSpec {
    type Output = KernelSpec;
    fn not(self) -> KernelSpec {
        self.flip()
    }
}
