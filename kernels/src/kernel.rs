//! The [`Kernel`] trait, the serialisable [`KernelSpec`] (a kernel *is* its validated
//! parameters), and kernel algebra: weighted sums, element-wise products, direction flips.
//!
//! Layering (no import cycles between files): the trait and [`KernelSpec`] name each other,
//! so they live here together; `KernelSpec` names every built-in parameter type, so the kernel
//! files must not import this module. Each kernel file implements the crate-private `Leaf`
//! trait (`leaf.rs`: direction, validation, computation returning the effective parameters)
//! and this module implements [`Kernel`] for it. The operators live in `ops.rs`, the
//! expression parser in `expr.rs`; both sit above this module.

use serde::{Deserialize, Serialize};

use crate::connectivity::ConnectivityParams;
use crate::csr::Csr;
use crate::cytotrace::CytoTraceParams;
use crate::error::KernelError;
use crate::labeling::LabelingTimeParams;
use crate::leaf::{to_transition, Leaf};
use crate::precomputed::PrecomputedParams;
use crate::pseudotime::PseudotimeParams;
use crate::real_time::RealTimeParams;
use crate::source::CellSource;
use crate::transition::{Direction, TransitionMatrix};
use crate::velocity::VelocityParams;

/// The result of computing a kernel: the transition matrix and the *effective* spec, with
/// every estimated quantity filled in (e.g. the softmax scale), so that recomputing the
/// effective spec reproduces the matrix exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelOutput {
    /// The row-stochastic transition matrix.
    pub transition: TransitionMatrix,
    /// The spec with estimated parameters filled in.
    pub effective: KernelSpec,
}

/// A kernel: validated parameters that compute a transition matrix from a [`CellSource`].
pub trait Kernel: std::fmt::Debug + Send + Sync {
    /// CellRank's class name (`VelocityKernel`, ...).
    fn name(&self) -> &'static str;
    /// The serialisable description of this kernel.
    fn spec(&self) -> KernelSpec;
    /// `Some(direction)` for directed kernels, `None` for undirected ones (connectivity).
    fn direction(&self) -> Option<Direction>;
    /// Checks the parameters.
    fn validate(&self) -> Result<(), KernelError>;
    /// Computes the transition matrix.
    fn compute(&self, cells: &dyn CellSource) -> Result<KernelOutput, KernelError>;
}

/// A serialisable kernel expression: one of the built-in kernels with its parameters, or a
/// combination. This is what `uns["T_fwd_params"]` stores and what `--kernel` parses into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum KernelSpec {
    /// [`ConnectivityParams`].
    Connectivity(ConnectivityParams),
    /// [`PseudotimeParams`].
    Pseudotime(PseudotimeParams),
    /// [`VelocityParams`].
    Velocity(VelocityParams),
    /// [`PrecomputedParams`].
    Precomputed(PrecomputedParams),
    /// [`CytoTraceParams`].
    #[serde(rename = "cytotrace")]
    CytoTrace(CytoTraceParams),
    /// [`LabelingTimeParams`].
    LabelingTime(LabelingTimeParams),
    /// [`RealTimeParams`].
    RealTime(RealTimeParams),
    /// Weighted sum `Σ (w_k / Σw) T_k`.
    Sum {
        /// `(weight, kernel)` pairs; weights non-negative, finite, not all zero.
        terms: Vec<(f64, KernelSpec)>,
    },
    /// Element-wise product of the transition matrices, row-normalised.
    Product {
        /// Factors.
        factors: Vec<KernelSpec>,
    },
}

/// The built-in kernel kinds (the names of expressions, `--param KIND.NAME=...` and TOML
/// tables), each with its aliases: CellRank's short names (`vk`, `ck`, `pk`, `ctk`, `rtk`,
/// ...) and class names. Names are matched case-insensitively.
pub const BUILTIN_KERNELS: [(&str, &[&str]); 7] = [
    ("velocity", &["vk", "velocitykernel"]),
    ("connectivity", &["ck", "connectivitykernel"]),
    ("pseudotime", &["pk", "pseudotimekernel"]),
    ("cytotrace", &["ctk", "cytotracekernel"]),
    (
        "labeling_time",
        &["labeling", "ltk", "labelingtime", "labelingtimekernel"],
    ),
    ("real_time", &["rtk", "realtime", "realtimekernel"]),
    ("precomputed", &["prk", "precomputedkernel"]),
];

/// The built-in kind a name or alias stands for (`vk` → `velocity`), case-insensitively.
pub fn builtin_kind(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    BUILTIN_KERNELS
        .iter()
        .find(|(kind, aliases)| *kind == lower || aliases.contains(&lower.as_str()))
        .map(|(kind, _)| *kind)
}

/// A node of an expression, for the algebra below: a leaf kernel or a combination.
enum Node<'a> {
    Leaf(&'a dyn Kernel),
    Sum(&'a [(f64, KernelSpec)]),
    Product(&'a [KernelSpec]),
}

impl KernelSpec {
    fn node(&self) -> Node<'_> {
        match self {
            Self::Connectivity(p) => Node::Leaf(p),
            Self::Pseudotime(p) => Node::Leaf(p),
            Self::Velocity(p) => Node::Leaf(p),
            Self::Precomputed(p) => Node::Leaf(p),
            Self::CytoTrace(p) => Node::Leaf(p),
            Self::LabelingTime(p) => Node::Leaf(p),
            Self::RealTime(p) => Node::Leaf(p),
            Self::Sum { terms } => Node::Sum(terms),
            Self::Product { factors } => Node::Product(factors),
        }
    }

    /// The kernel a name of an expression stands for (a built-in kind or alias, see
    /// [`BUILTIN_KERNELS`]), with CellRank's default parameters.
    pub fn named(name: &str) -> Result<Self, KernelError> {
        Ok(match builtin_kind(name) {
            Some("velocity") => VelocityParams::default().into(),
            Some("connectivity") => ConnectivityParams::default().into(),
            Some("pseudotime") => PseudotimeParams::default().into(),
            Some("cytotrace") => CytoTraceParams::default().into(),
            Some("labeling_time") => LabelingTimeParams::default().into(),
            Some("real_time") => RealTimeParams::default().into(),
            Some("precomputed") => PrecomputedParams::default().into(),
            _ => {
                return Err(KernelError::UnknownKernel {
                    name: name.to_string(),
                    known: known_kernels(),
                })
            }
        })
    }

    /// The leaves of the expression, in order.
    pub fn leaves(&self) -> Vec<&KernelSpec> {
        match self {
            Self::Sum { terms } => terms.iter().flat_map(|(_, k)| k.leaves()).collect(),
            Self::Product { factors } => factors.iter().flat_map(KernelSpec::leaves).collect(),
            leaf => vec![leaf],
        }
    }

    /// Flips the direction of every directed kernel in the expression (CellRank's `~k`).
    pub fn flip(mut self) -> Self {
        self.for_each_leaf_mut(&mut |k| match k {
            Self::Velocity(p) => p.backward = !p.backward,
            Self::Pseudotime(p) => p.backward = !p.backward,
            Self::Precomputed(p) => p.backward = !p.backward,
            Self::CytoTrace(p) => p.backward = !p.backward,
            Self::LabelingTime(p) => p.backward = !p.backward,
            _ => {}
        });
        self
    }

    fn for_each_leaf_mut(&mut self, f: &mut dyn FnMut(&mut KernelSpec)) {
        match self {
            Self::Sum { terms } => terms.iter_mut().for_each(|(_, k)| k.for_each_leaf_mut(f)),
            Self::Product { factors } => factors.iter_mut().for_each(|k| k.for_each_leaf_mut(f)),
            leaf => f(leaf),
        }
    }

    /// A weighted sum, flattened: a nested sum's weights are renormalised and scaled by its
    /// own weight. Weights must be finite and non-negative.
    pub fn sum(terms: Vec<(f64, KernelSpec)>) -> Self {
        let mut flat = Vec::new();
        for (w, k) in terms {
            match k {
                Self::Sum { terms: inner } => {
                    let total: f64 = inner.iter().map(|(v, _)| v).sum();
                    for (v, kk) in inner {
                        let scaled = if total > 0.0 { w * v / total } else { 0.0 };
                        flat.push((scaled, kk));
                    }
                }
                other => flat.push((w, other)),
            }
        }
        Self::Sum { terms: flat }
    }

    /// An element-wise product, flattened.
    pub fn product(factors: Vec<KernelSpec>) -> Self {
        let mut flat = Vec::new();
        for k in factors {
            match k {
                Self::Product { factors: inner } => flat.extend(inner),
                other => flat.push(other),
            }
        }
        Self::Product { factors: flat }
    }

    /// Sets `name = value` on every leaf of kind `kernel` (`velocity`, `connectivity`, ...,
    /// or an alias such as `vk`), as `--param velocity.similarity=cosine` does. `value` is parsed as JSON when it can be
    /// (numbers, booleans, `null`, objects), else taken as a string; a JSON value that does
    /// not fit a text parameter is retried as text (`time_key=2`). Returns how many leaves
    /// changed.
    pub fn set_param(
        &mut self,
        kernel: &str,
        name: &str,
        value: &str,
    ) -> Result<usize, KernelError> {
        let kernel = builtin_kind(kernel).unwrap_or(kernel);
        let as_text = serde_json::Value::String(value.to_string());
        let json_value: serde_json::Value =
            serde_json::from_str(value).unwrap_or_else(|_| as_text.clone());
        let present: Vec<String> = self.leaves().iter().map(|l| l.kind().to_string()).collect();
        let mut count = 0;
        let mut err = None;
        self.for_each_leaf_mut(&mut |leaf| {
            if err.is_some() || leaf.kind() != kernel {
                return;
            }
            let obj = match serde_json::to_value(&*leaf) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            if !obj.contains_key(name) || name == "kernel" {
                err = Some(KernelError::UnknownParam {
                    kernel: kernel.to_string(),
                    name: name.to_string(),
                    known: obj.keys().filter(|k| *k != "kernel").cloned().collect(),
                });
                return;
            }
            let with = |v: &serde_json::Value| {
                let mut o = obj.clone();
                o.insert(name.to_string(), v.clone());
                serde_json::from_value::<KernelSpec>(serde_json::Value::Object(o))
            };
            let decoded = match with(&json_value) {
                Err(_) if json_value != as_text => with(&as_text).or_else(|_| with(&json_value)),
                other => other,
            };
            match decoded {
                Ok(new) => {
                    *leaf = new;
                    count += 1;
                }
                Err(e) => {
                    err = Some(KernelError::InvalidParamValue {
                        kernel: kernel.to_string(),
                        name: name.to_string(),
                        value: value.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        });
        match err {
            Some(e) => Err(e),
            None if count == 0 => Err(KernelError::ParamTargetsNoKernel {
                kernel: kernel.to_string(),
                name: name.to_string(),
                present,
            }),
            None => Ok(count),
        }
    }

    /// Short kind name of a leaf (`velocity`, `connectivity`, `pseudotime`, `precomputed`,
    /// `cytotrace`, `labeling_time`, `real_time`), `sum`/`product` for combinations: the
    /// name used in expressions, `--param KIND.NAME=...` and TOML tables.
    pub fn kind(&self) -> &str {
        match self {
            Self::Connectivity(_) => "connectivity",
            Self::Pseudotime(_) => "pseudotime",
            Self::Velocity(_) => "velocity",
            Self::Precomputed(_) => "precomputed",
            Self::CytoTrace(_) => "cytotrace",
            Self::LabelingTime(_) => "labeling_time",
            Self::RealTime(_) => "real_time",
            Self::Sum { .. } => "sum",
            Self::Product { .. } => "product",
        }
    }

    /// Serialises to JSON (the format of `uns["T_fwd_params"]["spec"]` and of `--spec` files).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON written by [`KernelSpec::to_json`] and validates it.
    pub fn from_json(s: &str) -> Result<Self, KernelError> {
        let spec: Self = serde_json::from_str(s).map_err(|e| KernelError::SpecJson {
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }
}

/// Every kernel name an expression accepts (without aliases).
pub fn known_kernels() -> Vec<String> {
    BUILTIN_KERNELS.iter().map(|(k, _)| k.to_string()).collect()
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
        match self.node() {
            Node::Leaf(k) => k.name(),
            Node::Sum(_) => "KernelAdd",
            Node::Product(_) => "KernelMul",
        }
    }

    fn spec(&self) -> KernelSpec {
        self.clone()
    }

    fn direction(&self) -> Option<Direction> {
        match self.node() {
            Node::Leaf(k) => k.direction(),
            Node::Sum(terms) => combine_direction(terms.iter().map(|t| &t.1)).ok().flatten(),
            Node::Product(factors) => combine_direction(factors.iter()).ok().flatten(),
        }
    }

    fn validate(&self) -> Result<(), KernelError> {
        match self.node() {
            Node::Leaf(k) => k.validate(),
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
        match self.node() {
            Node::Leaf(k) => k.compute(cells),
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

// ----- the built-in kernels -----------------------------------------------------------------

/// `Kernel` and `From<P> for KernelSpec` for each built-in parameter type, delegating to its
/// [`Leaf`] implementation (in the kernel's own file).
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
                let (transition, effective) = self.leaf_compute(cells)?;
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
