//! What scVelo computes from the velocities once they exist, on a file: the velocity graph
//! (`tl.velocity_graph`), the velocity confidences (`tl.velocity_confidence`: length,
//! confidence, transition confidence; plus RNAVelocity's displacement coherence), and for the
//! dynamical model the root/end cells and the gene-shared latent time (`tl.latent_time`),
//! through [`cellfate_dynamics`]. Written under scVelo's keys: `uns["velocity_graph"]`,
//! `uns["velocity_graph_neg"]`, `obs["velocity_self_transition"]`, `obs["velocity_length"]`,
//! `obs["velocity_confidence"]`, `obs["velocity_confidence_transition"]`,
//! `obs["velocity_coherence"]` (ours), `obs["root_cells"]`, `obs["end_points"]`,
//! `obs["latent_time"]`.

use std::path::Path;

use cellfate_dynamics as dynamics;

use cellfate_kernels::{CellSource, Csr};

use crate::io::{Element, H5adEdit, H5adReader, StoredColumns};
use crate::pipeline::PipelineError;

/// Where latent time starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LatentRoot {
    /// scVelo's rule: root cells from the backward velocity chain's stationary states (the
    /// cells with the smallest summed fit_t when none stand out).
    #[default]
    Auto,
    /// One cell, by index or obs name (scVelo's `root_key` in `uns`).
    Cell(String),
    /// The cells of one cluster (`obs[key] == name`).
    Cluster {
        /// obs column.
        key: String,
        /// Cluster name.
        name: String,
    },
}

/// What [`velocity_summaries_in_file`] computed.
#[derive(Clone, Debug, Default)]
pub struct VelocitySummary {
    /// Velocity genes used (non-NaN velocity).
    pub n_genes: usize,
    /// Median `velocity_confidence`.
    pub median_confidence: f64,
    /// Latent time: the root cells used, and whether they were detected (not a fallback).
    pub latent_roots: Option<(Vec<usize>, bool)>,
    /// What the user should know about how the result was computed (e.g. no root cells
    /// detected because the backward chain's eigenvalues near 1 could not be resolved).
    pub notes: Vec<String>,
}

fn err(msg: String) -> PipelineError {
    PipelineError::Preprocessing { message: msg }
}

/// Computes the velocity graph, the confidences and (when `layers["fit_t"]` exists, the
/// dynamical model) latent time on `path`, and rewrites `path` with them (the file is ours:
/// an output of `velocity`, `preprocess` or an intermediate of `run`).
pub fn velocity_summaries_in_file(
    path: &Path,
    root: &LatentRoot,
) -> Result<VelocitySummary, PipelineError> {
    // What earlier stages (the velocity fit, say) freed goes back to the system first.
    crate::upstream::release_free_memory();
    let r = H5adReader::open(path)?;
    let source = path.display().to_string();
    for (slot, why) in [
        ("layers/Ms", "first moments of spliced counts"),
        ("layers/velocity", "RNA velocity"),
        (
            "obsp/distances",
            "the kNN distances the velocity graph uses",
        ),
        (
            "obsp/connectivities",
            "the kNN graph latent time is smoothed over",
        ),
    ] {
        if !r.exists(slot) {
            return Err(err(format!("{source}: {slot} is missing ({why})")));
        }
    }
    // Only the velocity genes' columns are read (in blocks of rows): at 100,000 cells the
    // whole Ms and velocity layers would be gigabytes each in double precision.
    let shape2 = |slot: &str| -> Result<(usize, usize), PipelineError> {
        match r.info(slot)?.shape[..] {
            [a, b] => Ok((a, b)),
            ref other => Err(err(format!(
                "{source}: {slot}: expected a cells x genes matrix, found shape {other:?}"
            ))),
        }
    };
    let (n, g) = shape2("layers/Ms")?;
    let (n2, g2) = shape2("layers/velocity")?;
    if (n, g) != (n2, g2) {
        return Err(err(format!(
            "{source}: layers Ms ({n}x{g}) and velocity ({n2}x{g2}) differ in shape"
        )));
    }
    let mask: Option<Vec<bool>> = if r.exists("var/velocity_genes") {
        let v = r
            .column("var", "velocity_genes")?
            .to_f64_vec()
            .ok_or_else(|| {
                err(format!(
                    "{source}: var/velocity_genes: expected a boolean column"
                ))
            })?;
        if v.len() != g {
            return Err(err(format!(
                "{source}: var/velocity_genes has {} values for the {g} genes of layers/velocity",
                v.len()
            )));
        }
        Some(v.into_iter().map(|x| x != 0.0).collect())
    } else {
        None
    };
    let keep: Vec<usize> = (0..g)
        .filter(|&j| mask.as_ref().is_none_or(|m| m[j]))
        .collect();
    let dyn_err = |e: dynamics::VelocityError| err(format!("{source}: {e}"));
    let distances = r.obsp("distances")?;
    let mode_stochastic = matches!(
        r.read("uns/velocity_params/mode"),
        Ok(Element::Str(m)) if m == "stochastic"
    );
    // Everything that needs Ms and velocity, in a scope of its own: the two matrices are freed
    // before fit_t is read for the latent time (at 100,000 cells × 2,000 genes each is 1.6 GB).
    // Both are read in the precision they are stored in (float32 as written by cellfate and
    // scVelo: half the memory, the same values).
    let summaries = {
        let ms = r.dense_select_stored("layers/Ms", &keep)?;
        let vel = r.dense_select_stored("layers/velocity", &keep)?;
        let k = keep.len();
        fn go<X: dynamics::Scalar, V: dynamics::Scalar>(
            ms: &[X],
            vel: &[V],
            (n, k): (usize, usize),
            distances: &Csr,
            stochastic: bool,
        ) -> Result<dynamics::VelocitySummaries, dynamics::VelocityError> {
            dynamics::velocity_summaries(&dynamics::SummaryInput {
                ms: dynamics::RowMajor::new("layers/Ms", ms, n, k)?,
                velocity: dynamics::RowMajor::new("layers/velocity", vel, n, k)?,
                distances,
                stochastic,
            })
        }
        let (d, st) = (&distances, mode_stochastic);
        match (&ms, &vel) {
            (StoredColumns::F32(.., x), StoredColumns::F32(.., v)) => go(x, v, (n, k), d, st),
            (StoredColumns::F32(.., x), StoredColumns::F64(.., v)) => go(x, v, (n, k), d, st),
            (StoredColumns::F64(.., x), StoredColumns::F32(.., v)) => go(x, v, (n, k), d, st),
            (StoredColumns::F64(.., x), StoredColumns::F64(.., v)) => go(x, v, (n, k), d, st),
        }
        .map_err(dyn_err)?
    };
    let dynamics::VelocitySummaries {
        graph: vg,
        length,
        confidence: conf,
        confidence_transition: conf_t,
        coherence,
        n_genes,
    } = summaries;
    let mut summary = VelocitySummary {
        n_genes,
        median_confidence: median(&conf),
        latent_roots: None,
        notes: Vec::new(),
    };
    let mut edit = H5adEdit::new(path);
    edit.set(
        "obs/velocity_self_transition",
        Element::from_f64(vg.self_transition.clone()),
    );
    edit.set("obs/velocity_length", Element::from_f64(length));
    edit.set("obs/velocity_confidence", Element::from_f64(conf));
    edit.set(
        "obs/velocity_confidence_transition",
        Element::from_f64(conf_t),
    );
    edit.set("obs/velocity_coherence", Element::from_f64(coherence));
    if r.exists("layers/fit_t") && r.exists("var/fit_likelihood") {
        let likelihood = r
            .column("var", "fit_likelihood")?
            .to_f64_vec()
            .ok_or_else(|| err(format!("{source}: var/fit_likelihood: expected numbers")))?;
        let (nt, gt) = shape2("layers/fit_t")?;
        if (nt, gt) != (n, likelihood.len()) {
            return Err(err(format!(
                "{source}: layers/fit_t ({nt}x{gt}) must have one row per cell ({n}) and one column per value of var/fit_likelihood ({})",
                likelihood.len()
            )));
        }
        // Latent time uses the genes with likelihood ≥ its minimum only: just those columns.
        let lt_opts = dynamics::LatentTimeOptions::default();
        let fitted = dynamics::latent_time_genes(&likelihood, &lt_opts);
        let fit_t = r.dense_select_stored("layers/fit_t", &fitted)?;
        let likelihood: Vec<f64> = fitted.iter().map(|&j| likelihood[j]).collect();
        let g = fitted.len();
        let root = match root {
            LatentRoot::Auto => dynamics::Root::Auto,
            LatentRoot::Cell(c) => {
                let names = r.obs_names()?;
                let i = c
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < n)
                    .or_else(|| names.iter().position(|x| x == c))
                    .ok_or_else(|| {
                        err(format!(
                            "{source}: root cell {c:?} is neither a cell index below {n} nor an obs name"
                        ))
                    })?;
                dynamics::Root::Cell(i)
            }
            LatentRoot::Cluster { key, name } => {
                let labels = r
                    .obs_labels(key)
                    .map_err(|e| err(format!("{source}: {e}")))?;
                let scores = labels
                    .iter()
                    .map(|l| f64::from(u8::from(l.as_deref() == Some(name.as_str()))))
                    .collect::<Vec<f64>>();
                if !scores.iter().any(|&s| s > 0.0) {
                    let mut known: Vec<String> = labels.iter().flatten().cloned().collect();
                    known.sort();
                    known.dedup();
                    return Err(err(format!(
                        "{source}: root cluster {name:?} not found in obs/{key} (clusters: {})",
                        known.join(", ")
                    )));
                }
                dynamics::Root::Scores(scores)
            }
        };
        let conn = r.obsp("connectivities")?;
        type Graphs<'a> = (&'a dynamics::VelocityGraph, &'a Csr, &'a Csr);
        type Fitted<'a> = (
            &'a [f64],
            &'a dynamics::Root,
            &'a dynamics::LatentTimeOptions,
        );
        fn go<T: dynamics::Scalar>(
            t: &[T],
            (n, g): (usize, usize),
            (vg, distances, conn): Graphs<'_>,
            (likelihood, root, opts): Fitted<'_>,
        ) -> Result<(dynamics::TerminalStates, dynamics::LatentTime), dynamics::VelocityError>
        {
            let fit_t = dynamics::RowMajor::new("layers/fit_t", t, n, g)?;
            dynamics::latent_time_from_graph(vg, distances, conn, fit_t, likelihood, root, opts)
        }
        let graphs = (&vg, &distances, &conn);
        let fitted_args = (&likelihood[..], &root, &lt_opts);
        let (ts, lt) = match &fit_t {
            StoredColumns::F32(.., t) => go(t, (n, g), graphs, fitted_args),
            StoredColumns::F64(.., t) => go(t, (n, g), graphs, fitted_args),
        }
        .map_err(dyn_err)?;
        drop(fit_t);
        for (what, converged, restarts) in [
            ("root cells", ts.root_converged, ts.restarts[0]),
            ("end points", ts.end_converged, ts.restarts[1]),
        ] {
            if !converged {
                summary.notes.push(format!(
                    "{what}: the eigenvalues of the {} velocity chain near 1 are too clustered \
                     (many nearly closed sets) to resolve within the eigen solve's budget \
                     ({restarts} restarts); no {what} were detected (obs/{} is 0){}",
                    if what == "root cells" {
                        "backward"
                    } else {
                        "forward"
                    },
                    if what == "root cells" {
                        "root_cells"
                    } else {
                        "end_points"
                    },
                    if what == "root cells" {
                        "; latent time starts from the cells with the smallest sum of fit_t \
                         (scVelo's rule when no root is detected); --root-cluster or \
                         --root-cell choose the start"
                    } else {
                        ""
                    }
                ));
            }
        }
        edit.set("obs/root_cells", Element::from_f64(ts.root_cells.clone()));
        edit.set("obs/end_points", Element::from_f64(ts.end_points.clone()));
        edit.set("obs/latent_time", Element::from_f64(lt.latent_time));
        summary.latent_roots = Some((lt.roots, lt.roots_detected));
    }
    edit.set("uns/velocity_graph", Element::Sparse(vg.graph.into()));
    edit.set(
        "uns/velocity_graph_neg",
        Element::Sparse(vg.graph_neg.into()),
    );
    drop(r);
    edit.write_in_place()?;
    Ok(summary)
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
