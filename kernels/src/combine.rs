//! Kernel algebra: [`Kernel`] for [`KernelSpec`] — weighted sums (`Σ (w_k / Σw) T_k`) and
//! element-wise products (row-normalised) of any kernels, built-in or user-defined, with
//! their directions checked.

use crate::csr::Csr;
use crate::error::KernelError;
use crate::kernel::{CustomSpec, Kernel, KernelOutput, KernelSpec};
use crate::leaf::to_transition;
use crate::source::CellSource;
use crate::transition::Direction;

/// A node of an expression: a built-in leaf, a user-defined leaf, or a combination.
enum Node<'a> {
    Leaf(&'a dyn Kernel),
    Custom(&'a CustomSpec),
    Sum(&'a [(f64, KernelSpec)]),
    Product(&'a [KernelSpec]),
}

fn node(spec: &KernelSpec) -> Node<'_> {
    match spec {
        KernelSpec::Connectivity(p) => Node::Leaf(p),
        KernelSpec::Pseudotime(p) => Node::Leaf(p),
        KernelSpec::Velocity(p) => Node::Leaf(p),
        KernelSpec::Precomputed(p) => Node::Leaf(p),
        KernelSpec::CytoTrace(p) => Node::Leaf(p),
        KernelSpec::LabelingTime(p) => Node::Leaf(p),
        KernelSpec::RealTime(p) => Node::Leaf(p),
        KernelSpec::Custom(c) => Node::Custom(c),
        KernelSpec::Sum { terms } => Node::Sum(terms),
        KernelSpec::Product { factors } => Node::Product(factors),
    }
}

/// The common direction of the kernels (`None` when all are undirected), or the error naming a
/// forward and a backward kernel.
fn combine_direction<'a>(
    kernels: impl Iterator<Item = &'a KernelSpec>,
) -> Result<Option<Direction>, KernelError> {
    let mut first: Option<(Direction, &'static str)> = None;
    for k in kernels {
        let Some(d) = k.direction() else { continue };
        match first {
            None => first = Some((d, k.name())),
            Some((o, other)) if o != d => {
                let (forward, backward) = if o == Direction::Forward {
                    (other, k.name())
                } else {
                    (k.name(), other)
                };
                return Err(KernelError::MixedDirections {
                    forward: forward.to_string(),
                    backward: backward.to_string(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(first.map(|f| f.0))
}

/// Checks that the next matrix of a combination has as many cells as the ones before it.
fn check_same_cells(acc: &Csr, next: &Csr, kernel: &KernelSpec) -> Result<(), KernelError> {
    if acc.nrows() != next.nrows() {
        return Err(KernelError::CellCountMismatch {
            kernel: kernel.name().to_string(),
            expected: acc.nrows(),
            got: next.nrows(),
        });
    }
    Ok(())
}

impl Kernel for KernelSpec {
    fn name(&self) -> &'static str {
        match node(self) {
            Node::Leaf(k) => k.name(),
            // An unregistered custom kernel: no class name to report.
            Node::Custom(c) => c.instance().map_or("CustomKernel", |k| k.name()),
            Node::Sum(_) => "KernelAdd",
            Node::Product(_) => "KernelMul",
        }
    }

    fn spec(&self) -> KernelSpec {
        self.clone()
    }

    fn direction(&self) -> Option<Direction> {
        match node(self) {
            Node::Leaf(k) => k.direction(),
            Node::Custom(c) => c.instance().ok().and_then(|k| k.direction()),
            Node::Sum(terms) => combine_direction(terms.iter().map(|t| &t.1)).ok().flatten(),
            Node::Product(factors) => combine_direction(factors.iter()).ok().flatten(),
        }
    }

    fn validate(&self) -> Result<(), KernelError> {
        match node(self) {
            Node::Leaf(k) => k.validate(),
            Node::Custom(c) => c.instance()?.validate(),
            Node::Sum(terms) => {
                if terms.is_empty() {
                    return Err(KernelError::EmptyCombination { combination: "sum" });
                }
                for (w, k) in terms {
                    if !(w.is_finite() && *w >= 0.0) {
                        return Err(KernelError::InvalidWeight {
                            kernel: k.name().to_string(),
                            weight: *w,
                        });
                    }
                    k.validate()?;
                }
                if terms.iter().map(|(w, _)| w).sum::<f64>() <= 0.0 {
                    return Err(KernelError::ZeroWeights {
                        n_terms: terms.len(),
                    });
                }
                combine_direction(terms.iter().map(|t| &t.1))?;
                Ok(())
            }
            Node::Product(factors) => {
                if factors.is_empty() {
                    return Err(KernelError::EmptyCombination {
                        combination: "product",
                    });
                }
                for k in factors {
                    k.validate()?;
                }
                combine_direction(factors.iter())?;
                Ok(())
            }
        }
    }

    fn compute(&self, cells: &dyn CellSource) -> Result<KernelOutput, KernelError> {
        self.validate()?;
        match node(self) {
            Node::Leaf(k) => k.compute(cells),
            Node::Custom(c) => c.instance()?.compute(cells),
            Node::Sum(terms) => {
                let total: f64 = terms.iter().map(|(w, _)| w).sum();
                let dir = self.direction().unwrap_or_default();
                let mut acc: Option<Csr> = None;
                let mut effective = Vec::with_capacity(terms.len());
                for (w, k) in terms {
                    let out = k.compute(cells)?;
                    let mut t = out.transition.into_csr();
                    let wn = w / total;
                    acc = Some(match acc {
                        None => {
                            t.data_mut().iter_mut().for_each(|x| *x *= wn);
                            t
                        }
                        Some(a) => {
                            check_same_cells(&a, &t, k)?;
                            a.add_scaled(1.0, &t, wn)
                        }
                    });
                    effective.push((*w, out.effective));
                }
                let m = acc.ok_or(KernelError::EmptyCombination { combination: "sum" })?;
                Ok(KernelOutput {
                    transition: to_transition("KernelAdd", m, dir)?,
                    effective: Self::Sum { terms: effective },
                })
            }
            Node::Product(factors) => {
                let dir = self.direction().unwrap_or_default();
                let mut acc: Option<Csr> = None;
                let mut effective = Vec::with_capacity(factors.len());
                for k in factors {
                    let out = k.compute(cells)?;
                    let t = out.transition.into_csr();
                    acc = Some(match acc {
                        None => t,
                        Some(a) => {
                            check_same_cells(&a, &t, k)?;
                            a.hadamard(&t)
                        }
                    });
                    effective.push(out.effective);
                }
                let m = acc.ok_or(KernelError::EmptyCombination {
                    combination: "product",
                })?;
                Ok(KernelOutput {
                    transition: to_transition("KernelMul", m, dir)?,
                    effective: Self::Product { factors: effective },
                })
            }
        }
    }
}
