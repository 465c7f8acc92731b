//! [`Kernel`] and `From<P> for KernelSpec` for the built-in parameter types, each delegating
//! to the crate-private `Leaf` implementation in the kernel's own file (see `leaf.rs` for why).

use crate::connectivity::ConnectivityParams;
use crate::cytotrace::CytoTraceParams;
use crate::error::KernelError;
use crate::kernel::{Kernel, KernelOutput, KernelSpec};
use crate::labeling::LabelingTimeParams;
use crate::leaf::Leaf;
use crate::precomputed::PrecomputedParams;
use crate::pseudotime::PseudotimeParams;
use crate::real_time::RealTimeParams;
use crate::source::CellSource;
use crate::transition::Direction;
use crate::velocity::VelocityParams;

/// `Kernel` and `From<P> for KernelSpec` for each built-in parameter type, delegating to its
/// `Leaf` implementation (in the kernel's own file).
macro_rules! builtin_kernels {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl Kernel for $t {
            fn name(&self) -> &'static str {
                <$t as Leaf>::NAME
            }

            fn spec(&self) -> KernelSpec {
                KernelSpec::$variant(self.clone())
            }

            fn direction(&self) -> Option<Direction> {
                self.leaf_direction()
            }

            fn validate(&self) -> Result<(), KernelError> {
                self.leaf_validate()
            }

            fn compute(&self, cells: &dyn CellSource) -> Result<KernelOutput, KernelError> {
                self.leaf_validate()?;
                let computed = self.leaf_compute(cells);
                if crate::interrupt::requested() {
                    return Err(KernelError::Interrupted {
                        kernel: <$t as Leaf>::NAME,
                    });
                }
                let (transition, effective) = computed?;
                Ok(KernelOutput {
                    transition,
                    effective: KernelSpec::$variant(effective),
                })
            }
        }

        impl From<$t> for KernelSpec {
            fn from(p: $t) -> Self {
                KernelSpec::$variant(p)
            }
        }
    )*};
}

builtin_kernels!(
    ConnectivityParams => Connectivity,
    PseudotimeParams => Pseudotime,
    VelocityParams => Velocity,
    PrecomputedParams => Precomputed,
    CytoTraceParams => CytoTrace,
    LabelingTimeParams => LabelingTime,
    RealTimeParams => RealTime,
);
