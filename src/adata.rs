//! AnnData elements of computed kernels and estimators under CellRank's keys, for any writer:
//! the `.h5ad` edit ([`crate::kernel_io`], [`crate::estimator_io`]) and the Python package,
//! which puts the same elements into an in-memory `AnnData`. One place decides what is
//! written where, so a file written by the CLI and an `AnnData` filled from Python hold the
//! same values under the same keys. Needs no HDF5.

use cellfate_estimators::gpcca::schur_to_x;
use cellfate_estimators::states::palette;
use cellfate_estimators::{CellStates, Cflare, Estimator, EstimatorError, Gpcca, Which};
use cellfate_kernels::{Direction, Kernel, KernelOutput, KernelSpec};

use crate::io::element::{
    Categorical, Categories, DataFrame, DenseArray, Element, NumVec, SparseArray,
};
use crate::io::keys;

/// Something that takes AnnData elements by slot (`obs/term_states_fwd`, `uns/...`).
pub trait SlotSink {
    /// Sets `slot` to `element`, replacing what was there.
    fn set(&mut self, slot: &str, element: Element);
}

/// Collects `(slot, element)` pairs in the order they were set (a later set of the same slot
/// replaces the earlier one).
impl SlotSink for Vec<(String, Element)> {
    fn set(&mut self, slot: &str, element: Element) {
        let slot = slot.trim_matches('/').to_string();
        self.retain(|(s, _)| s != &slot);
        self.push((slot, element));
    }
}

/// The cell and gene names the estimator elements index their dataframes with (read only when
/// a stage that needs them has been computed).
pub trait AxisNames {
    /// The error of reading the names; estimator errors convert into it.
    type Error: From<EstimatorError>;
    /// `obs_names`.
    fn obs_names(&self) -> Result<Vec<String>, Self::Error>;
    /// `var_names`.
    fn var_names(&self) -> Result<Vec<String>, Self::Error>;
}

/// Names held in memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Names {
    /// `obs_names`.
    pub obs: Vec<String>,
    /// `var_names`.
    pub var: Vec<String>,
}

impl AxisNames for Names {
    type Error = EstimatorError;
    fn obs_names(&self) -> Result<Vec<String>, EstimatorError> {
        Ok(self.obs.clone())
    }
    fn var_names(&self) -> Result<Vec<String>, EstimatorError> {
        Ok(self.var.clone())
    }
}

/// A JSON value as an AnnData element (`null`s are dropped: anndata cannot store them).
pub fn json_to_element(v: &serde_json::Value) -> Option<Element> {
    use serde_json::Value;
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => Element::Scalar(NumVec::Bool(vec![*b])),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Element::Scalar(NumVec::I64(vec![i])),
            None => Element::Scalar(NumVec::F64(vec![n.as_f64().unwrap_or(f64::NAN)])),
        },
        Value::String(s) => Element::Str(s.clone()),
        Value::Array(a) if a.iter().all(Value::is_string) => Element::from_strings(
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
        ),
        Value::Array(a) if a.iter().all(Value::is_number) => {
            Element::from_f64(a.iter().filter_map(Value::as_f64).collect())
        }
        Value::Array(a) => Element::Dict(
            a.iter()
                .enumerate()
                .filter_map(|(i, x)| json_to_element(x).map(|e| (i.to_string(), e)))
                .collect(),
        ),
        Value::Object(m) => Element::Dict(
            m.iter()
                .filter_map(|(k, x)| json_to_element(x).map(|e| (k.clone(), e)))
                .collect(),
        ),
    })
}

/// CellRank's `params` and `init` dictionaries for a kernel spec.
pub fn cellrank_params(spec: &KernelSpec) -> (serde_json::Value, serde_json::Value) {
    use serde_json::json;
    match spec {
        KernelSpec::Velocity(p) => {
            let mut params = json!({
                "model": "deterministic",
                "similarity": serde_json::to_value(p.similarity).unwrap_or_default(),
                "softmax_scale": p.softmax_scale,
            });
            if p.backward {
                params["bwd_mode"] = serde_json::to_value(p.backward_mode).unwrap_or_default();
            }
            let init = json!({"backward": p.backward, "xkey": p.xkey, "vkey": p.vkey, "attr": "layers", "conn_key": p.conn_key});
            (params, init)
        }
        KernelSpec::Connectivity(p) => (
            json!({"dnorm": p.density_normalize, "key": p.conn_key}),
            json!({"conn_key": p.conn_key}),
        ),
        KernelSpec::Pseudotime(p) => {
            let scheme = serde_json::to_value(p.threshold_scheme).unwrap_or_default();
            let params = match p.threshold_scheme {
                cellfate_kernels::ThresholdScheme::Hard => {
                    json!({"dnorm": false, "scheme": scheme, "frac_to_keep": p.frac_to_keep})
                }
                cellfate_kernels::ThresholdScheme::Soft => {
                    json!({"dnorm": false, "scheme": scheme, "b": p.b, "nu": p.nu})
                }
            };
            (
                params,
                json!({"time_key": p.time_key, "backward": p.backward, "conn_key": p.conn_key}),
            )
        }
        KernelSpec::Precomputed(p) => (
            json!({}),
            json!({"obsp_key": p.key(), "backward": p.backward}),
        ),
        KernelSpec::RealTime(p) => (
            json!({"threshold": serde_json::to_value(p.threshold).unwrap_or_default(),
                   "self_transitions": serde_json::to_value(p.self_transitions).unwrap_or_default()}),
            json!({"time_key": p.time_key}),
        ),
        KernelSpec::LabelingTime(p) => (
            json!({"model": "deterministic", "similarity": serde_json::to_value(p.similarity).unwrap_or_default(),
                   "softmax_scale": p.softmax_scale, "estimator": serde_json::to_value(p.estimator).unwrap_or_default()}),
            json!({"backward": p.backward, "new_key": p.new_key, "total_key": p.total_key, "time_key": p.time_key}),
        ),
        KernelSpec::CytoTrace(p) => (
            json!({"dnorm": false, "scheme": serde_json::to_value(p.threshold_scheme).unwrap_or_default(),
                   "frac_to_keep": p.frac_to_keep, "n_genes": p.n_genes, "layer": p.layer}),
            json!({"backward": p.backward, "conn_key": p.conn_key}),
        ),
        KernelSpec::Custom(c) => (c.params.clone(), json!({ "name": c.name })),
        KernelSpec::Sum { .. } | KernelSpec::Product { .. } => {
            let mut params = serde_json::Map::new();
            let leaves: Vec<(f64, &KernelSpec)> = match spec {
                KernelSpec::Sum { terms } => terms.iter().map(|(w, k)| (*w, k)).collect(),
                KernelSpec::Product { factors } => factors.iter().map(|k| (1.0, k)).collect(),
                _ => Vec::new(),
            };
            for (i, (w, k)) in leaves.iter().enumerate() {
                let (p, _) = cellrank_params(k);
                params.insert(
                    format!("{}:{i}", k.name()),
                    json!({"weight": w, "params": p}),
                );
            }
            (serde_json::Value::Object(params), json!({}))
        }
    }
}

/// Adds a computed kernel to an edit: `obsp[key]` and `uns[f"{key}_params"]`. `key` defaults
/// to `T_fwd`/`T_bwd` by direction.
pub fn kernel_elements(sink: &mut dyn SlotSink, out: &KernelOutput, key: Option<&str>) {
    let key = key.map_or_else(
        || keys::transition(out.transition.direction()),
        String::from,
    );
    let (params, init) = cellrank_params(&out.effective);
    let mut members = Vec::new();
    if let Some(p) = json_to_element(&params) {
        members.push(("params".to_string(), p));
    }
    if let Some(i) = json_to_element(&init) {
        members.push(("init".to_string(), i));
    }
    members.push(("spec".to_string(), Element::Str(out.effective.to_json())));
    members.push((
        "writer".to_string(),
        Element::Str(format!("cellfate {}", env!("CARGO_PKG_VERSION"))),
    ));
    sink.set(
        &format!("obsp/{key}"),
        Element::Sparse(SparseArray::from_csr(out.transition.as_csr())),
    );
    sink.set(&format!("uns/{key}_params"), Element::Dict(members));
}

fn labels_element(assign: &[Option<usize>], names: &[String]) -> Element {
    Element::Categorical(Categorical {
        codes: assign.iter().map(|a| a.map_or(-1, |q| q as i32)).collect(),
        categories: Categories::Str(names.to_vec()),
        ordered: false,
    })
}

fn scalar_f64(v: f64) -> Element {
    Element::Scalar(NumVec::F64(vec![v]))
}

fn scalar_i64(v: i64) -> Element {
    Element::Scalar(NumVec::I64(vec![v]))
}

/// Writes cell states under `obs[key]`, `obs[key_probs]`, `uns[key_colors]` and, when the
/// states have memberships and `with_memberships`, `obsm[key_memberships]`.
fn states_elements(sink: &mut dyn SlotSink, key: &str, s: &CellStates, with_memberships: bool) {
    sink.set(&keys::obs(key), labels_element(&s.assignment, &s.names));
    sink.set(
        &keys::obs(&keys::probs(key)),
        Element::from_f64(s.probs.clone()),
    );
    sink.set(
        &keys::uns(&keys::colors(key)),
        Element::from_strings(s.colors.clone()),
    );
    if with_memberships {
        if let Some(m) = &s.memberships {
            sink.set(
                &keys::obsm(&keys::memberships(key)),
                Element::from_dmatrix(m),
            );
        }
    }
}

/// Writes terminal states set without an estimator (e.g. by hand on a file with no
/// transition matrix) under the keys [`estimator_elements`] uses.
pub fn terminal_state_elements(sink: &mut dyn SlotSink, d: Direction, s: &CellStates) {
    states_elements(sink, &keys::terminal_states(d), s, true);
}

/// Writes what every estimator shares: terminal states, fate probabilities, absorption times,
/// priming and drivers (whatever has been computed).
pub fn estimator_elements<N: AxisNames + ?Sized>(
    sink: &mut dyn SlotSink,
    names: &N,
    e: &dyn Estimator,
) -> Result<(), N::Error> {
    let d = e.transition_matrix().direction();
    let n = e.transition_matrix().n_cells();
    if let Ok(term) = e.terminal_states() {
        states_elements(sink, &keys::terminal_states(d), term, true);
    }
    let colors = e
        .terminal_states()
        .map(|t| t.colors.clone())
        .unwrap_or_default();
    if let Ok(fates) = e.fate_probabilities() {
        let key = keys::lineages(d);
        sink.set(
            &keys::obsm(&key),
            Element::from_f64_matrix(n, fates.n_lineages(), fates.probs.clone()),
        );
        sink.set(
            &keys::uns(&keys::names(&key)),
            Element::from_strings(fates.names.clone()),
        );
        let colors = if colors.len() == fates.n_lineages() {
            colors
        } else {
            palette(fates.n_lineages()).map_err(|e| N::Error::from(EstimatorError::from(e)))?
        };
        sink.set(
            &keys::uns(&keys::colors(&key)),
            Element::from_strings(colors),
        );
    }
    if let Ok(times) = e.absorption_times() {
        let mut df = DataFrame::with_index(names.obs_names()?);
        let c = times.columns.len();
        for (k, name) in times.columns.iter().enumerate() {
            df.set_column(
                name,
                Element::from_f64((0..n).map(|i| times.values[i * c + k]).collect()),
            );
        }
        sink.set(
            &keys::obsm(&keys::absorption_times(d)),
            Element::DataFrame(df),
        );
    }
    if let Ok(p) = e.lineage_priming() {
        sink.set(
            &keys::obs(&keys::priming_degree(d)),
            Element::from_f64(p.to_vec()),
        );
    }
    if let Ok(table) = e.lineage_drivers() {
        let mut df = DataFrame::with_index(names.var_names()?);
        for (name, values) in table.columns() {
            df.set_column(&name, Element::from_f64(values));
        }
        sink.set(
            &keys::varm(keys::lineage_drivers(d)),
            Element::DataFrame(df),
        );
    }
    Ok(())
}

/// Writes a GPCCA estimator under CellRank's keys (CellRank's `GPCCA.to_adata`): the Schur
/// basis, matrix and eigenvalues, macrostates with memberships and the coarse-grained chain,
/// terminal and initial states, and the shared stages ([`estimator_elements`]).
pub fn gpcca_elements<N: AxisNames + ?Sized>(
    sink: &mut dyn SlotSink,
    names: &N,
    g: &Gpcca,
) -> Result<(), N::Error> {
    let d = g.transition_matrix().direction();
    if let Ok(schur) = g.schur() {
        let x = schur_to_x(schur).map_err(|e| N::Error::from(EstimatorError::from(e)))?;
        let (gap, alpha) = g.eigengap()?;
        let which = match g.schur_options().map(|o| o.which) {
            Some(Which::LargestMagnitude) => "LM",
            _ => "LR",
        };
        sink.set(
            &keys::obsm(&keys::schur_vectors(d)),
            Element::from_dmatrix(&x),
        );
        sink.set(
            &keys::uns(&keys::schur_matrix(d)),
            Element::from_dmatrix(&schur.r),
        );
        sink.set(
            &keys::uns(&keys::eigendecomposition(d)),
            Element::Dict(vec![
                (
                    "D".into(),
                    Element::Dense(DenseArray {
                        shape: vec![schur.eigenvalues.len()],
                        data: NumVec::C128(
                            schur
                                .eigenvalues
                                .iter()
                                .map(|&(a, b)| num_complex::Complex64::new(a, b))
                                .collect(),
                        ),
                    }),
                ),
                ("eigengap".into(), scalar_i64(gap as i64)),
                (
                    "params".into(),
                    Element::Dict(vec![
                        ("which".into(), Element::Str(which.into())),
                        ("k".into(), scalar_i64(schur.m() as i64)),
                        ("alpha".into(), scalar_f64(alpha)),
                    ]),
                ),
            ]),
        );
    }
    if let Ok(ms) = g.macrostates() {
        let key = keys::macrostates(d);
        let s = &ms.states;
        sink.set(&keys::obs(&key), labels_element(&s.assignment, &s.names));
        sink.set(
            &keys::uns(&keys::colors(&key)),
            Element::from_strings(s.colors.clone()),
        );
        if let Some(chi) = &s.memberships {
            sink.set(
                &keys::obsm(&keys::memberships(&key)),
                Element::from_dmatrix(chi),
            );
        }
        sink.set(
            &keys::uns(&keys::names(&key)),
            Element::from_strings(s.names.clone()),
        );
        let mut coarse_obs = DataFrame::with_index(s.names.clone());
        coarse_obs.set_column(
            "coarse_init_dist",
            Element::from_f64(ms.coarse_init.clone()),
        );
        if let Some(st) = &ms.coarse_stat {
            coarse_obs.set_column("coarse_stat_dist", Element::from_f64(st.clone()));
        }
        let empty = || Element::Dict(Vec::new());
        sink.set(
            &keys::uns(&keys::coarse(d)),
            Element::AnnData(vec![
                ("X".into(), Element::from_dmatrix(&ms.coarse_t)),
                ("obs".into(), Element::DataFrame(coarse_obs)),
                (
                    "var".into(),
                    Element::DataFrame(DataFrame::with_index(s.names.clone())),
                ),
                ("layers".into(), empty()),
                ("obsm".into(), empty()),
                ("obsp".into(), empty()),
                ("uns".into(), empty()),
                ("varm".into(), empty()),
                ("varp".into(), empty()),
            ]),
        );
    }
    if let Ok(init) = g.initial_states() {
        states_elements(sink, &keys::initial_states(d), init, false);
    }
    estimator_elements(sink, names, g)
}

/// Writes a CFLARE estimator (terminal states and the shared stages).
pub fn cflare_elements<N: AxisNames + ?Sized>(
    sink: &mut dyn SlotSink,
    names: &N,
    c: &Cflare,
) -> Result<(), N::Error> {
    estimator_elements(sink, names, c)
}
