//! Operator sugar for kernel algebra, as in CellRank: `0.8 * vk + 0.2 * ck` (weighted sums),
//! `vk * ck` (element-wise products), `!vk` (direction flip, CellRank's `~vk`).

use crate::connectivity::ConnectivityParams;
use crate::kernel::{Kernel, KernelSpec};
use crate::precomputed::PrecomputedParams;
use crate::pseudotime::PseudotimeParams;
use crate::velocity::VelocityParams;

macro_rules! kernel_ops {
    ($($t:ty),*) => {$(
        impl std::ops::Mul<$t> for f64 {
            type Output = KernelSpec;
            fn mul(self, k: $t) -> KernelSpec {
                KernelSpec::Sum { terms: vec![(self, k.spec())] }
            }
        }
        impl<R: Into<KernelSpec>> std::ops::Add<R> for $t {
            type Output = KernelSpec;
            fn add(self, r: R) -> KernelSpec {
                KernelSpec::from(self) + r
            }
        }
        impl std::ops::Not for $t {
            type Output = KernelSpec;
            fn not(self) -> KernelSpec {
                self.spec().flip()
            }
        }
    )*};
}
kernel_ops!(
    ConnectivityParams,
    PseudotimeParams,
    VelocityParams,
    PrecomputedParams
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

impl std::ops::Mul<KernelSpec> for KernelSpec {
    type Output = KernelSpec;
    fn mul(self, r: KernelSpec) -> KernelSpec {
        KernelSpec::product(vec![self, r])
    }
}

impl std::ops::Not for KernelSpec {
    type Output = KernelSpec;
    fn not(self) -> KernelSpec {
        self.flip()
    }
}
