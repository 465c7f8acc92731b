//! Perturbations on `.h5ad` files (`cellfate perturb`): what [`super::Prepared`] needs, read
//! from a file `cellfate run` wrote, and the results written into a copy of it.

use std::path::Path;

use cellfate_kernels::CellSource;

use super::{
    outcome_slots, parse_screen, run_screen, screen_slots, PerturbError, PerturbInput,
    PerturbReport, PerturbSpec, Prepared, Screen,
};
use crate::io::{Element, H5adEdit, H5adReader};
use crate::pipeline::PipelineError;

fn data(input: &Path, message: String) -> PipelineError {
    PerturbError::Data(format!("{}: {message}", input.display())).into()
}

/// Reads what a perturbation with `spec` needs from `r` (the file at `input`): the run's
/// kernel (`obsp[transition_key]` and its stored spec), the terminal states, the genes, the
/// clusters, the velocity model's rates (kinetic route) or the vector field with the cells'
/// positions and velocities in its basis (jacobian route).
pub fn input_from_file<'a>(
    r: &'a H5adReader,
    input: &Path,
    spec: &PerturbSpec,
) -> Result<PerturbInput<'a>, PipelineError> {
    let tkey = &spec.transition_key;
    if !r.exists(&format!("obsp/{tkey}")) {
        return Err(data(
            input,
            format!("obsp[\"{tkey}\"] is missing: perturb reads a file `cellfate run` wrote (a transition matrix and terminal states); run it first"),
        ));
    }
    let kernel = crate::kernel_io::read_kernel(r, tkey).map_err(|e| data(input, e.to_string()))?;
    let terms = crate::estimator_io::read_clusters(r, "term_states_fwd").map_err(|_| {
        data(
            input,
            "obs[\"term_states_fwd\"] is missing or not categorical: perturb predicts fates towards the run's terminal states; run `cellfate run` (or terminal-states) first".into(),
        )
    })?;
    let clusters = crate::estimator_io::read_clusters(r, &spec.cluster_key)
        .ok()
        .map(|c| (c.labels, c.categories));
    let col =
        |k: &str| -> Option<Vec<f64>> { r.column("var", k).ok().and_then(|e| e.to_f64_vec()) };
    let dynamical =
        matches!(r.read("uns/velocity_params/mode"), Ok(Element::Str(m)) if m == "dynamical");
    let field = match spec.method {
        super::PerturbMethod::Kinetic => None,
        super::PerturbMethod::Jacobian => {
            let basis = spec.basis.as_str();
            let n = r.n_obs()?;
            let f = crate::vectorfield_io::read_vector_field(r, input, basis)?;
            let d = f.dim();
            let (_, _, x, _) = crate::vectorfield_io::embedding(r, input, basis, Some(d))?;
            let (v, _, _) = crate::vectorfield_io::basis_velocity(r, input, basis, n, d)?;
            Some((f, x, v, basis.to_string()))
        }
    };
    Ok(PerturbInput {
        source: r,
        name: input.display().to_string(),
        kernel,
        terminal: (terms.labels, terms.categories),
        var_names: r.var_names()?,
        clusters,
        dynamical,
        velocity_gamma: col("velocity_gamma"),
        fit_rates: col("fit_beta").zip(col("fit_gamma")),
        field,
        log1p: r.exists("uns/log1p"),
    })
}

impl<'a> Prepared<'a> {
    /// [`Prepared::from_input`] on a file (see [`input_from_file`]).
    pub fn new(r: &'a H5adReader, input: &Path, spec: &PerturbSpec) -> Result<Self, PipelineError> {
        spec.validate_settings()?;
        Ok(Prepared::from_input(
            input_from_file(r, input, spec)?,
            spec,
        )?)
    }
}

/// The genes of a screen: `top_drivers:N` from `varm["terminal_lineage_drivers"]` (largest
/// |correlation| over the lineages, ties by name), or the listed genes.
pub fn screen_genes(
    r: &H5adReader,
    input: &Path,
    screen: &Screen,
) -> Result<Vec<String>, PipelineError> {
    match screen {
        Screen::Genes(g) => Ok(g.clone()),
        Screen::TopDrivers(k) => {
            let slot = "varm/terminal_lineage_drivers";
            let Ok(Element::DataFrame(df)) = r.read(slot) else {
                return Err(data(input, "varm[\"terminal_lineage_drivers\"] is missing: --screen top_drivers:N ranks the run's driver genes (`cellfate run` computes them); use --screen genes:A,B otherwise".into()));
            };
            let names = r.var_names()?;
            let mut best = vec![f64::NEG_INFINITY; names.len()];
            for (col, e) in &df.columns {
                if !col.ends_with("_corr") {
                    continue;
                }
                if let Some(v) = e.to_f64_vec() {
                    for (b, x) in best.iter_mut().zip(v) {
                        if x.is_finite() {
                            *b = b.max(x.abs());
                        }
                    }
                }
            }
            let mut order: Vec<usize> = (0..names.len()).filter(|&j| best[j].is_finite()).collect();
            order.sort_by(|&a, &b| best[b].total_cmp(&best[a]).then(names[a].cmp(&names[b])));
            Ok(order
                .into_iter()
                .take(*k)
                .map(|j| names[j].clone())
                .collect())
        }
    }
}

/// Perturbs (or screens) on `input` and writes the results into a copy at `output` (see the
/// module docs for the keys).
pub fn perturb_in_file(
    input: &Path,
    output: &Path,
    spec: &PerturbSpec,
) -> Result<PerturbReport, PipelineError> {
    spec.validate()?;
    let r = H5adReader::open(input)?;
    let p = Prepared::new(&r, input, spec)?;
    let mut edit = H5adEdit::new(input);
    let mut report = PerturbReport {
        outcome: None,
        screen: Vec::new(),
        skipped: Vec::new(),
        lineages: p.lineages.clone(),
    };
    if let Some(s) = &spec.screen {
        let genes = screen_genes(&r, input, &parse_screen(s)?)?;
        let (rows, skipped) = run_screen(&p, &genes);
        if rows.is_empty() {
            return Err(data(
                input,
                format!(
                    "--screen {s}: no gene could be perturbed ({})",
                    skipped
                        .iter()
                        .map(|(g, e)| format!("{g}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ));
        }
        report.screen = rows;
        report.skipped = skipped;
        for (slot, e) in screen_slots(&p, spec, &report) {
            edit.set(&slot, e);
        }
    } else {
        let o = p.perturb(&spec.genes)?;
        let emb_name = spec.embedding.clone().unwrap_or_else(|| {
            if r.exists("obsm/X_umap") {
                "umap".into()
            } else {
                spec.basis.clone()
            }
        });
        let emb = r.obsm(&format!("X_{emb_name}")).ok().map(|e| (emb_name, e));
        for (slot, e) in outcome_slots(&p, spec, &o, emb.as_ref()) {
            edit.set(&slot, e);
        }
        report.outcome = Some(o);
    }
    edit.write_to(output)?;
    Ok(report)
}
