//! Perturbations on `.h5ad` files (`cellfate perturb`): what [`super::Prepared`] needs, read
//! from a file `cellfate run` wrote, and the results written into a copy of it.

use std::path::Path;

use cellfate_kernels::{projection, CellSource};

use cellfate_dynamics::perturb::changed_fates;

use super::{
    parse_screen, run_screen, PerturbError, PerturbInput, PerturbReport, PerturbSpec, Prepared,
    Screen,
};
use crate::io::{Element, H5adEdit, H5adReader, SparseArray};
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
    let l = p.lineages.len();
    let n = p.base_t.n_cells();
    let key = &spec.key;
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
        let json = serde_json::json!({
            "screen": s,
            "change": p.change.describe(),
            "method": spec.method,
            "lineages": p.lineages,
            "ranking": report.screen,
            "skipped": report.skipped,
        });
        edit.set(&format!("uns/{key}_screen"), Element::Str(json.to_string()));
    } else {
        let o = p.perturb(&spec.genes)?;
        let shift: Vec<f64> = o
            .fates
            .iter()
            .zip(&p.base_fates)
            .map(|(a, b)| a - b)
            .collect();
        let changed = changed_fates(&p.base_fates, &o.fates, l);
        edit.set(
            &format!("obsm/lineages_fwd_{key}"),
            Element::from_f64_matrix(n, l, o.fates.clone()),
        );
        edit.set(
            &format!("obsm/lineages_fwd_{key}_shift"),
            Element::from_f64_matrix(n, l, shift),
        );
        edit.set(
            &format!("obs/fate_changed_{key}"),
            Element::from_bools(changed),
        );
        if let Some(t) = &o.transition {
            edit.set(
                &format!("obsp/{key}_transition_matrix"),
                Element::Sparse(SparseArray::from_csr(t.as_csr())),
            );
            let emb_name = spec.embedding.clone().unwrap_or_else(|| {
                if r.exists("obsm/X_umap") {
                    "umap".into()
                } else {
                    spec.basis.clone()
                }
            });
            if let Ok(e) = r.obsm(&format!("X_{emb_name}")) {
                let proj = projection::project(t, &e);
                edit.set(
                    &format!("obsm/velocity_{emb_name}_{key}"),
                    Element::from_f64_matrix(n, e.ncols(), proj),
                );
            }
        }
        if let Some(dv) = &o.delta_v {
            let d = dv.len() / n.max(1);
            edit.set(
                "obsm/j_delta_x_perturbation",
                Element::from_f64_matrix(n, d, dv.clone()),
            );
        }
        let json = serde_json::json!({
            "genes": o.genes,
            "change": o.change,
            "method": spec.method,
            "cluster": spec.cluster,
            "lineages": o.lineages,
            "n_cells_perturbed": o.n_cells_perturbed,
            "summary": o.groups,
        });
        edit.set(&format!("uns/{key}"), Element::Str(json.to_string()));
        report.outcome = Some(o);
    }
    edit.write_to(output)?;
    Ok(report)
}
