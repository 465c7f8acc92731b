//! The [`Kernel`] trait, the serialisable [`KernelSpec`] (a kernel *is* its validated
//! parameters), user-defined kernels ([`CustomKernel`], [`register_kernel`]) and the names
//! of expressions.
//!
//! Layering (no import cycles between files): the trait and [`KernelSpec`] name each other
//! (and a user-defined leaf holds a way to build a `dyn Kernel`), so they live here together.
//! `KernelSpec` names every built-in parameter type, so the kernel files must not import this
//! module: each implements the crate-private `Leaf` trait (`leaf.rs`), and `builtin.rs`
//! implements [`Kernel`] for it. The algebra (`Kernel` for `KernelSpec`: sums, products) is in
//! `combine.rs`, the operators in `ops.rs`, the expression parser in `expr.rs`; all sit above
//! this module.
//!
//! # User-defined kernels
//!
//! A kernel written outside this crate implements [`Kernel`] (its `spec()` returning
//! [`KernelSpec::custom`]) and [`CustomKernel`] (a name and serde parameters with defaults).
//! Its spec joins sums and products like any other (`0.7 * mine.spec() + 0.3 * ck`) and
//! computes in-process as it is. To rebuild it from text — JSON (`uns["T_fwd_params"]`,
//! `--spec` files), TOML, saved kernels, or an expression naming it — register it once with
//! [`register_kernel`]:
//!
//! ```
//! use cellfate_kernels::{
//!     expr, register_kernel, CellSource, ConnectivityParams, CustomKernel, Direction, Kernel,
//!     KernelError, KernelOutput, KernelSpec, TransitionMatrix,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! /// Stays in place with probability `stay`, else follows the kNN graph.
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct Lazy {
//!     stay: f64,
//! }
//! impl Default for Lazy {
//!     fn default() -> Self {
//!         Self { stay: 0.5 }
//!     }
//! }
//! impl CustomKernel for Lazy {
//!     const NAME: &'static str = "lazy";
//! }
//! impl Kernel for Lazy {
//!     fn name(&self) -> &'static str {
//!         "LazyKernel"
//!     }
//!     fn spec(&self) -> KernelSpec {
//!         KernelSpec::custom(self)
//!     }
//!     fn direction(&self) -> Option<Direction> {
//!         None
//!     }
//!     fn validate(&self) -> Result<(), KernelError> {
//!         Ok(())
//!     }
//!     fn compute(&self, cells: &dyn CellSource) -> Result<KernelOutput, KernelError> {
//!         let walk = ConnectivityParams::default().compute(cells)?.transition;
//!         let stay = cellfate_kernels::Csr::identity(cells.n_cells());
//!         let m = walk.as_csr().add_scaled(1.0 - self.stay, &stay, self.stay);
//!         let transition = TransitionMatrix::from_weights(m, Direction::Forward)
//!             .map_err(|source| KernelError::Transition { kernel: "LazyKernel", source })?;
//!         Ok(KernelOutput { transition, effective: self.spec() })
//!     }
//! }
//!
//! let k = 0.7 * Lazy { stay: 0.2 }.spec() + 0.3 * ConnectivityParams::default();
//! // Not registered yet: the spec cannot be rebuilt from text.
//! assert!(matches!(KernelSpec::from_json(&k.to_json()), Err(KernelError::UnknownKernel { .. })));
//! register_kernel::<Lazy>()?;
//! assert_eq!(KernelSpec::from_json(&k.to_json())?, k);
//! let mut parsed = expr::parse("0.7 * lazy + 0.3 * connectivity")?;
//! parsed.set_param("lazy", "stay", "0.2")?;
//! assert_eq!(parsed, k);
//! # Ok::<(), KernelError>(())
//! ```
//!
//! The registry is process-wide (a read-mostly table behind a lock) rather than a value passed
//! around: specs are rebuilt deep inside serde deserialisation, [`KernelSpec::from_json`],
//! the saved-kernel reader and the expression parser, which the CLI, TOML configs and the
//! pipeline call with no place to thread a registry through. Registration is idempotent for
//! the same type, so a program registers its kernels once at start-up (or a test before use).

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::connectivity::ConnectivityParams;
use crate::cytotrace::CytoTraceParams;
use crate::error::{KernelError, RegistrationProblem};
use crate::labeling::LabelingTimeParams;
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

/// A serialisable kernel expression: one of the built-in kernels with its parameters, a
/// user-defined kernel, or a combination. This is what `uns["T_fwd_params"]` stores and what
/// `--kernel` parses into.
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
    /// A user-defined kernel ([`CustomKernel`]): `{"kernel": "custom", "name": ..., "params":
    /// ...}`.
    Custom(CustomSpec),
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

impl KernelSpec {
    /// The spec of a user-defined kernel: its [`CustomKernel::NAME`] and its parameters. The
    /// spec remembers how to rebuild `K` from the parameters, so it computes (and takes
    /// [`KernelSpec::set_param`]) in this process without registration; a spec read back from
    /// text needs [`register_kernel`].
    pub fn custom<K: CustomKernel>(kernel: &K) -> Self {
        Self::Custom(CustomSpec {
            name: K::NAME.to_string(),
            // A derived `Serialize` of a struct with named fields cannot fail; a type whose
            // implementation does fails later with a typed error (`null` parameters).
            params: serde_json::to_value(kernel).unwrap_or(serde_json::Value::Null),
            build: Some(build::<K>),
        })
    }

    /// The kernel a name of an expression stands for, with its default parameters: a
    /// built-in kind or alias (see [`BUILTIN_KERNELS`]; CellRank's defaults) or a registered
    /// user-defined kernel ([`register_kernel`]).
    pub fn named(name: &str) -> Result<Self, KernelError> {
        if builtin_kind(name).is_none() {
            let lower = name.to_ascii_lowercase();
            let entry = registry().get(&lower).map(|e| (e.default_params, e.build));
            if let Some((default_params, build)) = entry {
                return Ok(Self::Custom(CustomSpec {
                    params: default_params().map_err(|e| KernelError::CustomParams {
                        kernel: lower.clone(),
                        params: "the defaults".into(),
                        reason: e.to_string(),
                    })?,
                    name: lower,
                    build: Some(build),
                }));
            }
        }
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
            Self::Custom(c) => {
                if let Some(serde_json::Value::Bool(b)) = c.params.get_mut("backward") {
                    *b = !*b;
                }
            }
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
            let decoded = match with_param(leaf, name, &json_value) {
                Err(ParamFailure::Invalid(_)) if json_value != as_text => {
                    with_param(leaf, name, &as_text)
                        .or_else(|_| with_param(leaf, name, &json_value))
                }
                other => other,
            };
            match decoded {
                Ok(new) => {
                    *leaf = new;
                    count += 1;
                }
                Err(ParamFailure::Unknown(known)) => {
                    err = Some(KernelError::UnknownParam {
                        kernel: kernel.to_string(),
                        name: name.to_string(),
                        known,
                    });
                }
                Err(ParamFailure::Invalid(reason)) => {
                    err = Some(KernelError::InvalidParamValue {
                        kernel: kernel.to_string(),
                        name: name.to_string(),
                        value: value.to_string(),
                        reason,
                    });
                }
                Err(ParamFailure::Other(e)) => err = Some(e),
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
    /// `cytotrace`, `labeling_time`, `real_time`, or a user-defined kernel's name),
    /// `sum`/`product` for combinations: the name used in expressions, `--param KIND.NAME=...`
    /// and TOML tables.
    pub fn kind(&self) -> &str {
        match self {
            Self::Connectivity(_) => "connectivity",
            Self::Pseudotime(_) => "pseudotime",
            Self::Velocity(_) => "velocity",
            Self::Precomputed(_) => "precomputed",
            Self::CytoTrace(_) => "cytotrace",
            Self::LabelingTime(_) => "labeling_time",
            Self::RealTime(_) => "real_time",
            Self::Custom(c) => &c.name,
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

/// Why one parameter could not be set on one leaf.
enum ParamFailure {
    /// No such parameter; the leaf's parameters.
    Unknown(Vec<String>),
    /// The value does not decode; the decoder's message.
    Invalid(String),
    /// Anything else (an unregistered custom kernel).
    Other(KernelError),
}

/// `leaf` with parameter `name` set to `v`.
fn with_param(
    leaf: &KernelSpec,
    name: &str,
    v: &serde_json::Value,
) -> Result<KernelSpec, ParamFailure> {
    if let KernelSpec::Custom(c) = leaf {
        let mut params = match &c.params {
            serde_json::Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if !params.contains_key(name) {
            return Err(ParamFailure::Unknown(params.keys().cloned().collect()));
        }
        params.insert(name.to_string(), v.clone());
        let new = CustomSpec {
            params: serde_json::Value::Object(params),
            ..c.clone()
        };
        return match new.instance() {
            // The kernel's own spec: parameters in its canonical form (`3` read as `3.0`).
            Ok(k) => Ok(match k.spec() {
                KernelSpec::Custom(own) if own.name == new.name => KernelSpec::Custom(CustomSpec {
                    build: new.build.or(own.build),
                    ..own
                }),
                _ => KernelSpec::Custom(new),
            }),
            Err(KernelError::CustomParams { reason, .. }) => Err(ParamFailure::Invalid(reason)),
            Err(other) => Err(ParamFailure::Other(other)),
        };
    }
    let mut obj = match serde_json::to_value(leaf) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if !obj.contains_key(name) || name == "kernel" {
        return Err(ParamFailure::Unknown(
            obj.keys().filter(|k| *k != "kernel").cloned().collect(),
        ));
    }
    obj.insert(name.to_string(), v.clone());
    serde_json::from_value::<KernelSpec>(serde_json::Value::Object(obj))
        .map_err(|e| ParamFailure::Invalid(e.to_string()))
}

// ----- user-defined kernels ---------------------------------------------------------------

/// A user-defined kernel that expressions can name and specs can store: a [`Kernel`] whose
/// parameters are the type itself (serde, with defaults), under a name. Implement
/// [`Kernel::spec`] as `KernelSpec::custom(self)`; see the [module docs](self) for an example.
pub trait CustomKernel: Kernel + Serialize + DeserializeOwned + Default + 'static {
    /// The name in expressions (`0.7 * NAME + 0.3 * ck`), `--param NAME.x=...`, TOML tables
    /// and specs: a lowercase identifier that is not a built-in kernel's name or alias.
    const NAME: &'static str;
}

/// Rebuilds a user-defined kernel from its parameters.
type BuildFn = fn(serde_json::Value) -> Result<Box<dyn Kernel>, serde_json::Error>;

fn build<K: CustomKernel>(params: serde_json::Value) -> Result<Box<dyn Kernel>, serde_json::Error> {
    serde_json::from_value::<K>(params).map(|k| Box::new(k) as Box<dyn Kernel>)
}

fn default_params<K: CustomKernel>() -> Result<serde_json::Value, serde_json::Error> {
    serde_json::to_value(K::default())
}

/// The spec of a user-defined kernel ([`KernelSpec::Custom`]): its name and parameters.
/// Equal specs have equal names and parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomSpec {
    /// The kernel's [`CustomKernel::NAME`].
    pub name: String,
    /// Its parameters: the kernel serialised to JSON.
    pub params: serde_json::Value,
    /// How to rebuild the kernel, when the spec was made in this process by
    /// [`KernelSpec::custom`]; otherwise the registry is asked.
    #[serde(skip)]
    build: Option<BuildFn>,
}

impl PartialEq for CustomSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.params == other.params
    }
}

impl CustomSpec {
    /// A spec of a registered kernel from its name and parameters (as read from text).
    pub fn new(name: impl Into<String>, params: serde_json::Value) -> Self {
        Self {
            name: name.into(),
            params,
            build: None,
        }
    }

    /// The kernel this spec describes, rebuilt from its parameters. Errors: the name is not
    /// registered ([`KernelError::UnknownKernel`]), or the parameters do not decode
    /// ([`KernelError::CustomParams`]).
    pub fn instance(&self) -> Result<Box<dyn Kernel>, KernelError> {
        let build = match self.build {
            Some(b) => b,
            None => {
                // The lock is released at the end of this statement, before `known_kernels`
                // takes it again.
                let registered = registry().get(&self.name).map(|e| e.build);
                registered.ok_or_else(|| KernelError::UnknownKernel {
                    name: self.name.clone(),
                    known: known_kernels(),
                })?
            }
        };
        build(self.params.clone()).map_err(|e| KernelError::CustomParams {
            kernel: self.name.clone(),
            params: self.params.to_string(),
            reason: e.to_string(),
        })
    }
}

struct Entry {
    type_id: TypeId,
    type_name: &'static str,
    build: BuildFn,
    default_params: fn() -> Result<serde_json::Value, serde_json::Error>,
}

/// The process-wide registry of user-defined kernels (see the module docs for why).
static REGISTRY: RwLock<BTreeMap<String, Entry>> = RwLock::new(BTreeMap::new());

fn registry() -> std::sync::RwLockReadGuard<'static, BTreeMap<String, Entry>> {
    // A panic while holding the lock cannot leave the map half-updated (one insert).
    REGISTRY.read().unwrap_or_else(PoisonError::into_inner)
}

/// Words that cannot name a user-defined kernel: the tags of combinations and custom leaves.
const RESERVED: [&str; 3] = ["sum", "product", "custom"];

/// Registers the user-defined kernel `K` under [`CustomKernel::NAME`], so that expressions
/// can name it and specs read from JSON, TOML, `uns` or saved kernels can rebuild it.
/// Registering the same type again is a no-op. Errors ([`KernelError::Registration`]): the
/// name is not a lowercase identifier, is a built-in kernel's name or alias or a reserved
/// word (`sum`, `product`, `custom`), or another type holds it.
pub fn register_kernel<K: CustomKernel>() -> Result<(), KernelError> {
    let name = K::NAME;
    let fail = |problem| KernelError::Registration {
        name: name.to_string(),
        problem,
    };
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(fail(RegistrationProblem::InvalidName));
    }
    if builtin_kind(name).is_some() || RESERVED.contains(&name) {
        let mut taken: Vec<String> = BUILTIN_KERNELS
            .iter()
            .flat_map(|(k, aliases)| std::iter::once(*k).chain(aliases.iter().copied()))
            .chain(RESERVED)
            .map(String::from)
            .collect();
        taken.sort();
        return Err(fail(RegistrationProblem::Builtin { taken }));
    }
    let mut map = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = map.get(name) {
        if e.type_id == TypeId::of::<K>() {
            return Ok(());
        }
        return Err(fail(RegistrationProblem::Taken { other: e.type_name }));
    }
    map.insert(
        name.to_string(),
        Entry {
            type_id: TypeId::of::<K>(),
            type_name: std::any::type_name::<K>(),
            build: build::<K>,
            default_params: default_params::<K>,
        },
    );
    Ok(())
}

/// The names of the registered user-defined kernels, sorted.
pub fn registered_kernels() -> Vec<String> {
    registry().keys().cloned().collect()
}

/// Every kernel name an expression accepts (without aliases): the built-in kinds, then the
/// registered user-defined kernels.
pub fn known_kernels() -> Vec<String> {
    BUILTIN_KERNELS
        .iter()
        .map(|(k, _)| k.to_string())
        .chain(registered_kernels())
        .collect()
}
