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
                let dir = self.direction().unwrap_or_default();
                fold_sum(
                    terms.iter().map(|(w, k)| (*w, k, k.compute(cells))),
                    terms.iter().map(|(w, _)| w).sum(),
                    dir,
                )
            }
            Node::Product(factors) => {
                let dir = self.direction().unwrap_or_default();
                fold_product(factors.iter().map(|k| (k, k.compute(cells))), dir)
            }
        }
    }
}

/// Supplies the output of a leaf of an expression, or `None` to compute it (see
/// [`KernelSpec::compute_with`]).
pub type LeafOutputs<'a> = dyn Fn(&KernelSpec) -> Option<Result<KernelOutput, KernelError>> + 'a;

impl KernelSpec {
    /// [`Kernel::compute`] with some leaves supplied by the caller: `leaf` is asked for each
    /// leaf of the expression (built-in or user-defined kernel) and returns its output, or
    /// `None` to compute it from `cells`. Recomputes an expression when only one of its
    /// kernels changed (an in-silico perturbation changes the velocity kernel) and reuses the
    /// others.
    pub fn compute_with(
        &self,
        cells: &dyn CellSource,
        leaf: &LeafOutputs<'_>,
    ) -> Result<KernelOutput, KernelError> {
        self.validate()?;
        match node(self) {
            Node::Leaf(_) | Node::Custom(_) => match leaf(self) {
                Some(out) => out,
                None => self.compute(cells),
            },
            Node::Sum(terms) => {
                let dir = self.direction().unwrap_or_default();
                fold_sum(
                    terms
                        .iter()
                        .map(|(w, k)| (*w, k, k.compute_with(cells, leaf))),
                    terms.iter().map(|(w, _)| w).sum(),
                    dir,
                )
            }
            Node::Product(factors) => {
                let dir = self.direction().unwrap_or_default();
                fold_product(
                    factors.iter().map(|k| (k, k.compute_with(cells, leaf))),
                    dir,
                )
            }
        }
    }
}

/// `Σ (w_k / total) T_k` over kernels computed one after the other (only the running sum and
/// the current term are held).
fn fold_sum<'a>(
    terms: impl Iterator<Item = (f64, &'a KernelSpec, Result<KernelOutput, KernelError>)>,
    total: f64,
    dir: Direction,
) -> Result<KernelOutput, KernelError> {
    let mut acc: Option<Csr> = None;
    let mut effective = Vec::new();
    for (w, k, out) in terms {
        let out = out?;
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
        effective.push((w, out.effective));
    }
    let m = acc.ok_or(KernelError::EmptyCombination { combination: "sum" })?;
    Ok(KernelOutput {
        transition: to_transition("KernelAdd", m, dir)?,
        effective: KernelSpec::Sum { terms: effective },
    })
}

/// The row-normalised element-wise product of kernels computed one after the other.
fn fold_product<'a>(
    factors: impl Iterator<Item = (&'a KernelSpec, Result<KernelOutput, KernelError>)>,
    dir: Direction,
) -> Result<KernelOutput, KernelError> {
    let mut acc: Option<Csr> = None;
    let mut effective = Vec::new();
    for (k, out) in factors {
        let out = out?;
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
        effective: KernelSpec::Product { factors: effective },
    })
}

impl KernelOutput {
    /// CellRank's `w1 * k1 + w2 * k2 + ...` of kernels computed already (e.g. `0.8 * vk +
    /// 0.2 * ck` after both `compute_transition_matrix` calls): `Σ (w_k / Σw) T_k`, exactly
    /// what computing the sum's spec gives, without computing the terms again. Weights and
    /// directions are checked as for the spec.
    pub fn sum(terms: Vec<(f64, KernelOutput)>) -> Result<KernelOutput, KernelError> {
        let spec = KernelSpec::Sum {
            terms: terms
                .iter()
                .map(|(w, o)| (*w, o.effective.clone()))
                .collect(),
        };
        spec.validate()?;
        let dir = spec.direction().unwrap_or_default();
        let KernelSpec::Sum { terms: specs } = &spec else {
            unreachable!("built as a sum above")
        };
        let total = terms.iter().map(|(w, _)| w).sum();
        fold_sum(
            terms
                .into_iter()
                .zip(specs)
                .map(|((w, o), (_, k))| (w, k, Ok(o))),
            total,
            dir,
        )
    }

    /// CellRank's `k1 * k2 * ...` of kernels computed already: the row-normalised element-wise
    /// product, as computing the product's spec gives.
    pub fn product(factors: Vec<KernelOutput>) -> Result<KernelOutput, KernelError> {
        let spec = KernelSpec::Product {
            factors: factors.iter().map(|o| o.effective.clone()).collect(),
        };
        spec.validate()?;
        let dir = spec.direction().unwrap_or_default();
        let KernelSpec::Product { factors: specs } = &spec else {
            unreachable!("built as a product above")
        };
        fold_product(factors.into_iter().zip(specs).map(|(o, k)| (k, Ok(o))), dir)
    }
}
