//! AnnData elements of computed kernels and estimators under CellRank's keys, for any writer:
//! the `.h5ad` edit ([`crate::kernel_io`], [`crate::estimator_io`]) and the Python package,
//! which puts the same elements into an in-memory `AnnData`. One place decides what is
//! written where, so a file written by the CLI and an `AnnData` filled from Python hold the
//! same values under the same keys. Needs no HDF5.

use nalgebra::DMatrix;

use cellfate_estimators::absorption::{FateProbabilities, ROW_SUM_TOL};
use cellfate_estimators::gpcca::{coarse_grain, schur_to_x};
use cellfate_estimators::schur::uniform_eta;
use cellfate_estimators::states::palette;
use cellfate_estimators::{
    CellStates, Cflare, Estimator, EstimatorError, Gpcca, Macrostates, Which,
};
use cellfate_kernels::{Direction, Kernel, KernelOutput, KernelSpec, TransitionMatrix};

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
        sink.set(
            &keys::obsm(&keys::schur_vectors(d)),
            Element::from_dmatrix(&x),
        );
        sink.set(
            &keys::uns(&keys::schur_matrix(d)),
            Element::from_dmatrix(&schur.r),
        );
    }
    // The eigenvalues: those of the Schur form, or restored from a file without it.
    if let Ok(ev) = g.eigenvalues() {
        let (gap, alpha) = g.eigengap()?;
        let which = match g.schur_options().map(|o| o.which) {
            Some(Which::LargestMagnitude) => "LM",
            _ => "LR",
        };
        sink.set(
            &keys::uns(&keys::eigendecomposition(d)),
            Element::Dict(vec![
                (
                    "D".into(),
                    Element::Dense(DenseArray {
                        shape: vec![ev.len()],
                        data: NumVec::C128(
                            ev.iter()
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
                        ("k".into(), scalar_i64(ev.len() as i64)),
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

/// Where stored AnnData elements are read from: an `.h5ad` file (`H5adReader`) or an
/// in-memory AnnData (the Python package). What the estimators' `from_adata` reads goes
/// through these methods, so both restore the same estimator from the same slots. The
/// defaults derive everything from [`SlotSource::read`]; a file reader overrides them with its
/// own (bounded, lazily reading) versions.
pub trait SlotSource {
    /// The error of reading; estimator errors convert into it.
    type Error: From<EstimatorError>;
    /// Whether `slot` (`obs/term_states_fwd`, `uns/coarse_fwd/X`, ...) exists.
    fn exists(&self, slot: &str) -> bool;
    /// The element at `slot`.
    fn read(&self, slot: &str) -> Result<Element, Self::Error>;
    /// An error about `slot` holding something unusable.
    fn slot_error(&self, slot: &str, message: impl Into<String>) -> Self::Error;
    /// The row-stochastic transition matrix in `obsp[key]`.
    fn transition_matrix(&self, key: &str) -> Result<TransitionMatrix, Self::Error>;
    /// Column `name` of the dataframe `df` (`obs`, `var`).
    fn column(&self, df: &str, name: &str) -> Result<Element, Self::Error> {
        self.read(&format!("{df}/{name}"))
    }
    /// A 2-D numeric slot as `(rows, cols, row-major values)` (a 1-D one as one column).
    fn dense(&self, slot: &str) -> Result<(usize, usize, Vec<f64>), Self::Error> {
        match self.read(slot)? {
            Element::Dense(d) if d.shape.len() == 2 => {
                Ok((d.shape[0], d.shape[1], d.data.to_f64()))
            }
            Element::Dense(d) if d.shape.len() == 1 => Ok((d.shape[0], 1, d.data.to_f64())),
            other => Err(self.slot_error(
                slot,
                format!("expected a dense numeric array, found {}", other.encoding()),
            )),
        }
    }
    /// A numeric `obs` column.
    fn obs_f64(&self, name: &str) -> Result<Vec<f64>, Self::Error> {
        let slot = format!("obs/{name}");
        match self.column("obs", name)? {
            Element::Dense(d) if d.shape.len() == 1 => Ok(d.data.to_f64()),
            other => Err(self.slot_error(
                &slot,
                format!("expected a numeric column, found {}", other.encoding()),
            )),
        }
    }
    /// A dataframe slot.
    fn dataframe(&self, slot: &str) -> Result<DataFrame, Self::Error> {
        match self.read(slot)? {
            Element::DataFrame(df) => Ok(df),
            other => Err(self.slot_error(
                slot,
                format!("expected a dataframe, found {}", other.encoding()),
            )),
        }
    }
}

/// A string array stored at `slot` (`None` when absent or not strings).
fn strings_at<S: SlotSource + ?Sized>(r: &S, slot: &str) -> Option<Vec<String>> {
    match r.read(slot).ok()? {
        Element::Strings { values, .. } => Some(values),
        _ => None,
    }
}

/// Cell states stored under `obs[key]` (+ `_probs`, `_colors`, `_memberships` when present).
fn read_states<S: SlotSource + ?Sized>(r: &S, key: &str) -> Result<Option<CellStates>, S::Error> {
    let slot = keys::obs(key);
    if !r.exists(&slot) {
        return Ok(None);
    }
    let c = match r.column("obs", key)? {
        Element::Categorical(c) => c,
        other => {
            return Err(r.slot_error(
                &slot,
                format!("expected a categorical, found {}", other.encoding()),
            ))
        }
    };
    let names = c.categories.labels();
    let n = c.codes.len();
    let assignment: Vec<Option<usize>> = c
        .codes
        .iter()
        .map(|&k| usize::try_from(k).ok().filter(|&q| q < names.len()))
        .collect();
    let probs = if r.exists(&keys::obs(&keys::probs(key))) {
        r.obs_f64(&keys::probs(key))?
    } else {
        assignment
            .iter()
            .map(|a| if a.is_some() { 1.0 } else { 0.0 })
            .collect()
    };
    let colors = match strings_at(r, &keys::uns(&keys::colors(key))) {
        Some(c) if c.len() == names.len() => c,
        _ => palette(names.len()).map_err(|e| S::Error::from(EstimatorError::from(e)))?,
    };
    let mem_slot = keys::obsm(&keys::memberships(key));
    let memberships = if r.exists(&mem_slot) {
        let (rows, cols, v) = r.dense(&mem_slot)?;
        if rows != n || cols != names.len() {
            return Err(r.slot_error(
                &mem_slot,
                format!(
                    "expected {n} x {} memberships (cells x states of obs[{key:?}]), found {rows} x {cols}",
                    names.len()
                ),
            ));
        }
        Some(DMatrix::from_fn(rows, cols, |i, j| v[i * cols + j]))
    } else {
        None
    };
    Ok(Some(CellStates {
        names,
        colors,
        assignment,
        probs,
        memberships,
    }))
}

/// Fate probabilities in `obsm["lineages_fwd"]` with names in `uns`, restored as computed
/// elsewhere: the residual of their solve is unknown (NaN), the row sums are checked here.
fn read_fates<S: SlotSource + ?Sized>(
    r: &S,
    d: Direction,
) -> Result<Option<FateProbabilities>, S::Error> {
    let key = keys::lineages(d);
    let slot = keys::obsm(&key);
    if !r.exists(&slot) {
        return Ok(None);
    }
    let (n, l, probs) = r.dense(&slot)?;
    let names = match strings_at(r, &keys::uns(&keys::names(&key))) {
        Some(v) if v.len() == l => v,
        Some(v) => {
            return Err(r.slot_error(
                &keys::uns(&keys::names(&key)),
                format!("{} names for {l} lineages", v.len()),
            ))
        }
        None => (0..l).map(|j| j.to_string()).collect(),
    };
    let row_sum_error = (0..n)
        .map(|i| (probs[i * l..(i + 1) * l].iter().sum::<f64>() - 1.0).abs())
        .fold(0.0f64, f64::max);
    Ok(Some(FateProbabilities {
        names,
        probs,
        residual: f64::NAN,
        row_sum_error,
        row_sum_tol: ROW_SUM_TOL,
        max_absorption_time: None,
        solver: "restored from file",
    }))
}

fn restore_shared<S: SlotSource + ?Sized>(
    r: &S,
    e: &mut dyn Estimator,
    d: Direction,
) -> Result<(), S::Error> {
    let n = e.transition_matrix().n_cells();
    if let Some(term) = read_states(r, &keys::terminal_states(d))? {
        if term.assignment.len() != n {
            return Err(r.slot_error(
                &keys::obs(&keys::terminal_states(d)),
                format!(
                    "{} cells, the transition matrix has {n}",
                    term.assignment.len()
                ),
            ));
        }
        e.core_mut().replace_terminal(term);
        if let Some(f) = read_fates(r, d)? {
            e.core_mut().restore_fates(f);
        }
    }
    Ok(())
}

/// The eigenvalues in `uns["eigendecomposition_fwd"]["D"]` (complex or real).
fn read_eigenvalues<S: SlotSource + ?Sized>(r: &S, d: Direction) -> Option<(Vec<f64>, Vec<f64>)> {
    let slot = keys::uns(&format!("{}/D", keys::eigendecomposition(d)));
    match r.read(&slot).ok()? {
        Element::Dense(a) => match &a.data {
            NumVec::C128(v) => Some((
                v.iter().map(|c| c.re).collect(),
                v.iter().map(|c| c.im).collect(),
            )),
            other => {
                let re = other.to_f64();
                let im = vec![0.0; re.len()];
                Some((re, im))
            }
        },
        _ => None,
    }
}

/// Restores a GPCCA estimator from a file CellRank or cellfate wrote (CellRank's
/// `GPCCA.from_adata`): the transition matrix `obsp[transition_key]`, the eigenvalues, the
/// macrostates (memberships, names, colours, coarse-grained chain — recomputed from the
/// memberships when the file has none), terminal and initial states, and fate probabilities.
/// The Schur vectors are not restored: `compute_macrostates` needs `compute_schur` again.
pub fn read_gpcca<S: SlotSource + ?Sized>(r: &S, transition_key: &str) -> Result<Gpcca, S::Error> {
    let t = r.transition_matrix(transition_key)?;
    let d = t.direction();
    let n = t.n_cells();
    let mut g = Gpcca::new(t);
    if let Some((re, im)) = read_eigenvalues(r, d) {
        let alpha = match r.read(&keys::uns(&format!(
            "{}/params/alpha",
            keys::eigendecomposition(d)
        ))) {
            Ok(Element::Scalar(v)) if !v.is_empty() => v.get_f64(0),
            _ => 1.0,
        };
        g.restore_eigenvalues(re.into_iter().zip(im).collect(), alpha);
    }
    if let Some(mut states) = read_states(r, &keys::macrostates(d))? {
        let chi = states.memberships.clone().ok_or_else(|| {
            r.slot_error(
                &keys::obsm(&keys::memberships(&keys::macrostates(d))),
                "macrostates without memberships: recompute them (cellfate macrostates)",
            )
        })?;
        if chi.nrows() != n {
            return Err(r.slot_error(
                &keys::obs(&keys::macrostates(d)),
                format!("{} cells, the transition matrix has {n}", chi.nrows()),
            ));
        }
        if let Some(names) = strings_at(r, &keys::uns(&keys::names(&keys::macrostates(d)))) {
            if names.len() == states.names.len() {
                states.names = names;
            }
        }
        let m = chi.ncols();
        let coarse = keys::coarse(d);
        let (coarse_t, coarse_init, coarse_stat) = match r.dense(&keys::uns(&format!("{coarse}/X")))
        {
            Ok((a, b, v)) if a == m && b == m => {
                let df = r.dataframe(&keys::uns(&format!("{coarse}/obs"))).ok();
                let col =
                    |name: &str| -> Option<Vec<f64>> { df.as_ref()?.column(name)?.to_f64_vec() };
                let init = col("coarse_init_dist").unwrap_or_default();
                (
                    DMatrix::from_fn(m, m, |i, j| v[i * m + j]),
                    init,
                    col("coarse_stat_dist"),
                )
            }
            _ => match r.dense(&keys::uns(&keys::coarse_transition(d))) {
                Ok((a, b, v)) if a == m && b == m => {
                    let (_, ci, cs) =
                        coarse_grain(g.transition_matrix(), &chi, &uniform_eta(n), None);
                    (DMatrix::from_fn(m, m, |i, j| v[i * m + j]), ci, cs)
                }
                _ => coarse_grain(g.transition_matrix(), &chi, &uniform_eta(n), None),
            },
        };
        g.restore_macrostates(Macrostates {
            states,
            coarse_t,
            coarse_init,
            coarse_stat,
            crispness: None,
            report: None,
        });
    }
    if let Some(init) = read_states(r, &keys::initial_states(d))? {
        g.restore_initial_states(init);
    }
    restore_shared(r, &mut g, d)?;
    Ok(g)
}

/// Restores a CFLARE estimator: the transition matrix, terminal states and fate
/// probabilities (the eigendecomposition is recomputed by `compute_eigendecomposition`).
pub fn read_cflare<S: SlotSource + ?Sized>(
    r: &S,
    transition_key: &str,
) -> Result<Cflare, S::Error> {
    let t = r.transition_matrix(transition_key)?;
    let d = t.direction();
    let mut c = Cflare::new(t);
    restore_shared(r, &mut c, d)?;
    Ok(c)
}
