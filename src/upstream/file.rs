//! The upstream steps on `.h5ad` files (feature `h5ad`): [`prepare`] (the CLI's `preprocess`),
//! [`velocity_in_file`] and [`moments_velocity_in_file`]. They read the slots, call the
//! in-memory steps of the parent module and stream the results into the output block of genes
//! by block of genes (see the module documentation of [`crate::upstream`]).

use std::path::Path;

use cellfate_kernels::Csr;

use super::{
    as_stored, check_counts, check_x_shape, embed, log_normalise, neighbors_params,
    no_velocity_genes, shared_genes, stored_element, velocity, velocity_slots, CellSizes, Clock,
    CountsFloat64, LayerDtype, ObsSizes, PrepareReport, RawCounts, StageHook, UpstreamSpec,
    SPLICED, UNSPLICED,
};
use crate::io::{EarlySlots, Element, H5adEdit, H5adError, H5adReader};
use crate::pipeline::PipelineError;

/// [`check_counts`] with the cell and gene of the first bad entry named by the file's
/// `obs_names` and `var_names`.
pub fn check_counts_in(
    m: &Csr,
    file: &str,
    slot: &str,
    r: &H5adReader,
) -> Result<(), Box<super::InvalidCounts>> {
    check_counts(m, file, slot).map_err(|mut e| {
        if let Some(name) = r.obs_names().ok().and_then(|v| v.get(e.row).cloned()) {
            e.cell = name;
        }
        if let Some(name) = r.var_names().ok().and_then(|v| v.get(e.col).cloned()) {
            e.gene = name;
        }
        e
    })
}

fn err(msg: impl Into<String>) -> PipelineError {
    PipelineError::Preprocessing {
        message: msg.into(),
    }
}

/// `var["highly_variable"]` when present, as one flag per gene: a column of another length,
/// or one that is not numeric or boolean, is an error naming the slot (not silently ignored).
fn highly_variable_column(r: &H5adReader, g: usize) -> Result<Option<Vec<bool>>, PipelineError> {
    if !r.exists("var/highly_variable") {
        return Ok(None);
    }
    let col = r.column("var", "highly_variable")?;
    let found = col.encoding();
    let v = col.to_f64_vec().ok_or_else(|| {
        err(format!(
            "{}: var/highly_variable: expected a boolean column, found {found}",
            r.path().display()
        ))
    })?;
    if v.len() != g {
        return Err(err(format!(
            "{}: var/highly_variable: expected {g} values (one per gene of the layers), found {}",
            r.path().display(),
            v.len()
        )));
    }
    Ok(Some(v.into_iter().map(|x| x != 0.0).collect()))
}

/// Recomputes RNA velocity on a processed file (scVelo's `tl.velocity`): reads
/// `layers["Ms"]`, `layers["Mu"]` and, for the stochastic model, the normalised
/// `layers["spliced"]`/`["unspliced"]` with `obsp["connectivities"]`; `var["highly_variable"]`
/// restricts the velocity genes when present. Writes `output` (a copy of `input`); the
/// velocity layers are written block of genes by block of genes.
pub fn velocity_in_file(
    input: &Path,
    output: &Path,
    mode: velocity::VelocityMode,
    dynamics: &velocity::DynamicalSettings,
) -> Result<velocity::GeneFit, PipelineError> {
    let r = H5adReader::open(input)?;
    let need = |slot: &str, why: &str| -> Result<(), PipelineError> {
        if r.exists(slot) {
            Ok(())
        } else {
            Err(err(format!(
                "{}: {slot} is missing ({why}); run `cellfate preprocess` (or scVelo's moments) first",
                input.display()
            )))
        }
    };
    need("layers/Ms", "first moments of spliced counts")?;
    need("layers/Mu", "first moments of unspliced counts")?;
    let shape = |slot: &str| -> Result<Vec<usize>, PipelineError> { Ok(r.info(slot)?.shape) };
    let (sms, smu) = (shape("layers/Ms")?, shape("layers/Mu")?);
    if sms != smu || sms.len() != 2 {
        return Err(err(format!(
            "{}: layers Ms ({sms:?}) and Mu ({smu:?}) must be matrices of one shape",
            input.display()
        )));
    }
    let (n, g) = (sms[0], sms[1]);
    let hvg = highly_variable_column(&r, g)?;
    let stochastic = mode == velocity::VelocityMode::Stochastic;
    let counts = if stochastic {
        need(
            "layers/spliced",
            "normalised spliced counts for second moments",
        )?;
        need(
            "layers/unspliced",
            "normalised unspliced counts for second moments",
        )?;
        need("obsp/connectivities", "the kNN graph for second moments")?;
        let source = input.display().to_string();
        let (s, u) = (r.csr("layers/spliced")?, r.csr("layers/unspliced")?);
        check_counts_in(&s, &source, SPLICED, &r)?;
        check_counts_in(&u, &source, UNSPLICED, &r)?;
        Some((velocity::smoothing_graph(&r.obsp("connectivities")?), s, u))
    } else {
        None
    };
    let graph = if mode == velocity::VelocityMode::Dynamical {
        need(
            "obsp/connectivities",
            "the kNN graph the dynamical model smooths its states and times over",
        )?;
        Some(velocity::smoothing_graph(&r.obsp("connectivities")?))
    } else {
        None
    };
    // Dense layers are read block by block (hyperslabs); others (sparse) whole.
    let whole = if r.dense_f32_columns("layers/Ms", 0..0)?.is_some()
        && r.dense_f32_columns("layers/Mu", 0..0)?.is_some()
    {
        None
    } else {
        Some((r.dense_f32("layers/Ms")?.2, r.dense_f32("layers/Mu")?.2))
    };
    let src = FileMoments {
        r: &r,
        n,
        g,
        whole,
        counts,
        graph,
    };
    let mut edit = H5adEdit::new(input);
    if !stochastic {
        // A stochastic run's variance would no longer match the velocity.
        edit.remove("layers/variance_velocity");
    }
    let mut fitted = None;
    edit.write_to_with(output, |early| -> Result<_, PipelineError> {
        let fit = fit_into(early, &src, n, g, hvg.as_deref(), mode, dynamics, false)?;
        let slots = velocity_slots(&fit);
        fitted = Some(fit);
        Ok(slots)
    })?;
    fitted.ok_or_else(|| err("velocity: no fit"))
}

/// Moments and RNA velocity on a file that has a kNN graph but no moments (scVelo's
/// `pp.moments` + `tl.velocity` on a file processed by scanpy): `layers["spliced"]` and
/// `["unspliced"]` are normalised per cell to their median library size when they hold raw
/// counts (every value an integer, scVelo's test) and written back normalised (in the type
/// `dtype` gives, [`LayerDtype`]); `Ms`/`Mu` are
/// averaged over `obsp["connectivities"]` (each cell and its neighbours); the velocity fit
/// follows (`var["highly_variable"]` restricts the velocity genes when present). Writes
/// `output` (a copy of `input`), block of genes by block of genes.
pub fn moments_velocity_in_file(
    input: &Path,
    output: &Path,
    mode: velocity::VelocityMode,
    dynamics: &velocity::DynamicalSettings,
    dtype: LayerDtype,
) -> Result<velocity::GeneFit, PipelineError> {
    let source = input.display().to_string();
    let r = H5adReader::open(input)?;
    check_count_layers(&r, input)?;
    let float64 = counts_float64(&r, false);
    let (s_f64, u_f64) = (
        dtype.float64(float64.spliced),
        dtype.float64(float64.unspliced),
    );
    if !r.exists("obsp/connectivities") {
        return Err(err(format!(
            "{source}: obsp[\"connectivities\"] is missing (the kNN graph the moments average over); run `cellfate preprocess` first"
        )));
    }
    let w = velocity::smoothing_graph(&r.obsp("connectivities")?);
    let (s, u) = (r.csr("layers/spliced")?, r.csr("layers/unspliced")?);
    check_counts_in(&s, &source, SPLICED, &r)?;
    check_counts_in(&u, &source, UNSPLICED, &r)?;
    let (n, g) = (s.nrows(), s.ncols());
    if (u.nrows(), u.ncols()) != (n, g) {
        return Err(err(format!(
            "{source}: layers spliced ({n}×{g}) and unspliced ({}×{}) differ in shape",
            u.nrows(),
            u.ncols()
        )));
    }
    let is_counts = |m: &Csr| m.data().iter().all(|v| v.fract() == 0.0);
    let raw = is_counts(&s) && is_counts(&u);
    let (sn, un) = if raw {
        let (cs, cu) = (CellSizes::of(&s), CellSizes::of(&u));
        (as_stored(cs.scale(s), s_f64), as_stored(cu.scale(u), u_f64))
    } else {
        (s, u)
    };
    let hvg = highly_variable_column(&r, g)?;
    let mut edit = H5adEdit::new(input);
    if mode == velocity::VelocityMode::Deterministic {
        edit.remove("layers/variance_velocity");
    }
    let mut fitted = None;
    edit.write_to_with(output, |early| -> Result<_, PipelineError> {
        let fit = {
            let src = velocity::SmoothedCounts {
                w: &w,
                s: &sn,
                u: &un,
                local: None,
            };
            fit_into(early, &src, n, g, hvg.as_deref(), mode, dynamics, true)?
        };
        if !fit.velocity_genes.iter().any(|&b| b) {
            return Err(no_velocity_genes(&source).into());
        }
        if raw {
            early.write("layers/spliced", stored_element(sn, s_f64))?;
            early.write("layers/unspliced", stored_element(un, u_f64))?;
        }
        let slots = velocity_slots(&fit);
        fitted = Some(fit);
        Ok(slots)
    })?;
    fitted.ok_or_else(|| err("moments + velocity: no fit"))
}

/// First moments from a file's `layers["Ms"]`/`["Mu"]`, second moments smoothed from its
/// normalised counts (see [`velocity_in_file`]).
struct FileMoments<'a> {
    r: &'a H5adReader,
    n: usize,
    g: usize,
    /// The layers, when they are not dense datasets (read whole).
    whole: Option<(Vec<f32>, Vec<f32>)>,
    /// Smoothing graph, normalised spliced and unspliced counts (stochastic model).
    counts: Option<(Csr, Csr, Csr)>,
    /// Smoothing graph (dynamical model).
    graph: Option<Csr>,
}

impl velocity::MomentSource for FileMoments<'_> {
    type Block = std::ops::Range<usize>;
    type Error = H5adError;

    fn block(&self, genes: std::ops::Range<usize>) -> Result<Self::Block, H5adError> {
        Ok(genes)
    }

    fn first(&self, r: &Self::Block) -> Result<velocity::Pair, H5adError> {
        let (ms, mu) = self.first_unchecked(r)?;
        // NaN or infinite moments would make the genes' fits (and the velocity) NaN: an error
        // naming the layer and the first bad entry.
        for (slot, m) in [("layers/Ms", &ms), ("layers/Mu", &mu)] {
            let w = r.len().max(1);
            if let Some(k) = m.iter().position(|v| !v.is_finite()) {
                return Err(H5adError::Invalid {
                    path: self.r.path().to_path_buf(),
                    slot: slot.into(),
                    expected: "finite first moments (recompute them from the counts: `cellfate run --recompute` or `cellfate preprocess`)".into(),
                    found: format!(
                        "{} NaN or infinite values in genes {}..{}, the first {} at cell {}, gene {}",
                        m.iter().filter(|v| !v.is_finite()).count(),
                        r.start,
                        r.end,
                        m[k],
                        k / w,
                        r.start + k % w
                    ),
                });
            }
        }
        Ok((ms, mu))
    }

    fn has_second(&self) -> bool {
        self.counts.is_some()
    }

    fn second(&self, r: &Self::Block, cols: &[usize]) -> Result<Option<velocity::Pair>, H5adError> {
        let idx: Vec<usize> = cols.iter().map(|&c| r.start + c).collect();
        Ok(self
            .counts
            .as_ref()
            .map(|(w, s, u)| velocity::second_moments(w, s, u, &idx)))
    }

    fn graph(&self) -> Option<&Csr> {
        self.graph
            .as_ref()
            .or(self.counts.as_ref().map(|(w, _, _)| w))
    }
}

impl FileMoments<'_> {
    /// The first moments of genes `r` as stored (cells × genes of the block, row-major).
    fn first_unchecked(&self, r: &std::ops::Range<usize>) -> Result<velocity::Pair, H5adError> {
        if let Some((ms, mu)) = &self.whole {
            return Ok((
                velocity::column_slab(ms, self.n, self.g, r),
                velocity::column_slab(mu, self.n, self.g, r),
            ));
        }
        let read = |slot: &str| -> Result<Vec<f32>, H5adError> {
            self.r
                .dense_f32_columns(slot, r.clone())?
                .ok_or_else(|| H5adError::Invalid {
                    path: self.r.path().to_path_buf(),
                    slot: slot.into(),
                    expected: "a dense matrix".into(),
                    found: "another encoding".into(),
                })
        };
        Ok((read("layers/Ms")?, read("layers/Mu")?))
    }
}

/// Runs [`velocity::fit_velocity_blocks`] with its layers streamed into `early`
/// (`layers/velocity`, `layers/variance_velocity` in stochastic mode, and with `moments` also
/// `layers/Ms`, `layers/Mu`).
#[allow(clippy::too_many_arguments)]
fn fit_into<M: velocity::MomentSource>(
    early: &mut EarlySlots,
    src: &M,
    n: usize,
    g: usize,
    hvg: Option<&[bool]>,
    mode: velocity::VelocityMode,
    dynamics: &velocity::DynamicalSettings,
    moments: bool,
) -> Result<velocity::GeneFit, PipelineError>
where
    PipelineError: From<M::Error>,
{
    let mut layers = Vec::new();
    if moments {
        layers.push(early.dense_columns::<f32>("layers/Ms", n, g)?);
        layers.push(early.dense_columns::<f32>("layers/Mu", n, g)?);
    }
    let mut vel = early.dense_columns::<f32>("layers/velocity", n, g)?;
    let mut var = if mode == velocity::VelocityMode::Stochastic && src.has_second() {
        Some(early.dense_columns::<f32>("layers/variance_velocity", n, g)?)
    } else {
        None
    };
    let mut dyn_layers = Vec::new();
    if mode == velocity::VelocityMode::Dynamical {
        for key in ["fit_t", "fit_tau", "fit_tau_", "velocity_u"] {
            dyn_layers.push(early.dense_columns::<f32>(&format!("layers/{key}"), n, g)?);
        }
    }
    let fit = velocity::fit_velocity_blocks(src, n, g, hvg, mode, dynamics, &mut |b| {
        if let Some(d) = &b.dynamical {
            for (w, l) in dyn_layers
                .iter_mut()
                .zip([d.fit_t, d.fit_tau, d.fit_tau_, d.velocity_u])
            {
                w.write(b.genes.clone(), l)?;
            }
        }
        if moments {
            layers[0].write(b.genes.clone(), b.ms)?;
            layers[1].write(b.genes.clone(), b.mu)?;
        }
        vel.write(b.genes.clone(), b.velocity)?;
        if let (Some(w), Some(v)) = (var.as_mut(), b.variance) {
            w.write(b.genes.clone(), v)?;
        }
        Ok::<(), PipelineError>(())
    })?;
    for l in layers {
        l.finish()?;
    }
    vel.finish()?;
    if let Some(v) = var {
        v.finish()?;
    }
    for l in dyn_layers {
        l.finish()?;
    }
    Ok(fit)
}

/// Runs the upstream steps on `input`, writing `output` (a copy with the new slots).
pub fn prepare(
    input: &Path,
    output: &Path,
    spec: &UpstreamSpec,
) -> Result<PrepareReport, PipelineError> {
    prepare_with(input, output, spec, &mut |_| {})
}

/// [`prepare`], calling `hook` as each stage finishes.
pub fn prepare_with(
    input: &Path,
    output: &Path,
    spec: &UpstreamSpec,
    hook: &mut StageHook<'_>,
) -> Result<PrepareReport, PipelineError> {
    compute_and_write(input, Some(output), spec, hook)
}

/// Runs the upstream steps and writes the results into `path` itself (atomically). Use only
/// on files you own (e.g. the demo simulation).
pub fn prepare_in_place(path: &Path, spec: &UpstreamSpec) -> Result<PrepareReport, PipelineError> {
    compute_and_write(path, None, spec, &mut |_| {})
}

/// Where a file keeps its metabolic-labeling counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelingLayout {
    /// `layers["new"]` and `layers["total"]`.
    NewTotal,
    /// Four layers, unlabeled/labeled × unspliced/spliced (dynamo's `uu`, `ul`, `su`, `sl`;
    /// dynast's `un_<c>`, `ul_<c>`, `sn_<c>`, `sl_<c>`): new = ul + sl, total = all four.
    Four {
        /// Unlabeled unspliced.
        uu: String,
        /// Labeled unspliced.
        ul: String,
        /// Unlabeled spliced.
        su: String,
        /// Labeled spliced.
        sl: String,
    },
}

/// The labeling layout of `r`, if it has one.
pub fn labeling_layout(r: &H5adReader) -> Result<Option<LabelingLayout>, PipelineError> {
    let layers = r.keys("layers")?;
    let has = |k: &str| layers.iter().any(|l| l == k);
    if has("new") && has("total") {
        return Ok(Some(LabelingLayout::NewTotal));
    }
    if ["uu", "ul", "su", "sl"].iter().all(|k| has(k)) {
        return Ok(Some(LabelingLayout::Four {
            uu: "uu".into(),
            ul: "ul".into(),
            su: "su".into(),
            sl: "sl".into(),
        }));
    }
    // dynast: <u|s><l|n>_<conversion>, e.g. ul_TC.
    for l in &layers {
        if let Some(conv) = l.strip_prefix("ul_") {
            let name = |p: &str| format!("{p}_{conv}");
            if ["un", "sn", "sl"].iter().all(|p| has(&name(p))) {
                return Ok(Some(LabelingLayout::Four {
                    uu: name("un"),
                    ul: name("ul"),
                    su: name("sn"),
                    sl: name("sl"),
                }));
            }
        }
    }
    Ok(None)
}

/// The raw new and total counts of `r` in `layout` (four layers summed), checked as counts.
pub fn read_labeling_counts(
    r: &H5adReader,
    layout: &LabelingLayout,
    source: &str,
) -> Result<(Csr, Csr), PipelineError> {
    let read = |k: &str| -> Result<Csr, PipelineError> {
        let m = r.csr(&format!("layers/{k}"))?;
        check_counts_in(&m, source, &format!("layers[\"{k}\"]"), r)?;
        Ok(m)
    };
    match layout {
        LabelingLayout::NewTotal => Ok((read("new")?, read("total")?)),
        LabelingLayout::Four { uu, ul, su, sl } => {
            let (muu, mul, msu, msl) = (read(uu)?, read(ul)?, read(su)?, read(sl)?);
            let shape = |m: &Csr| (m.nrows(), m.ncols());
            for (k, m) in [(ul, &mul), (su, &msu), (sl, &msl)] {
                if shape(m) != shape(&muu) {
                    return Err(err(format!(
                        "{source}: layers {k} and {uu} differ in shape ({:?} and {:?})",
                        shape(m),
                        shape(&muu)
                    )));
                }
            }
            let new = mul.add_scaled(1.0, &msl, 1.0);
            let old = muu.add_scaled(1.0, &msu, 1.0);
            let total = new.add_scaled(1.0, &old, 1.0);
            Ok((new, total))
        }
    }
}

/// The labeling inputs of `r` when it has labeling layers and labeling is not switched off:
/// raw new and total counts (checked), the times and their key.
#[allow(clippy::type_complexity)]
fn labeling_inputs(
    r: &H5adReader,
    spec: &UpstreamSpec,
    source: &str,
) -> Result<Option<(Csr, Csr, Vec<f64>, String)>, PipelineError> {
    let lab = &spec.labeling;
    if lab.labeling_time.as_ref().is_some_and(|t| t.is_off()) {
        return Ok(None);
    }
    let Some(layout) = labeling_layout(r)? else {
        return Ok(None);
    };
    let first = match &layout {
        LabelingLayout::NewTotal => "total",
        LabelingLayout::Four { uu, .. } => uu.as_str(),
    };
    let n = r
        .info(&format!("layers/{first}"))?
        .shape
        .first()
        .copied()
        .unwrap_or(0);
    let column = |c: &str| -> Option<Vec<f64>> { r.obs_f64(c).ok() };
    let Some((times, key)) = super::labeling::resolve_times(lab, n, &column, source)? else {
        return Ok(None);
    };
    let (new, total) = read_labeling_counts(r, &layout, source)?;
    let obs = r.obs_names().unwrap_or_default();
    let var = r.var_names().unwrap_or_default();
    let names = |i: usize, j: usize| {
        (
            obs.get(i).cloned().unwrap_or_else(|| i.to_string()),
            var.get(j).cloned().unwrap_or_else(|| j.to_string()),
        )
    };
    super::labeling::check_labeling_counts(&new, &total, lab, source, &names)?;
    Ok(Some((new, total, times, key)))
}

/// The raw-count layers of `r`, or an error naming the layers found.
fn check_count_layers(r: &H5adReader, input: &Path) -> Result<(), PipelineError> {
    let layers = r.keys("layers")?;
    if !layers.iter().any(|l| l == "spliced") || !layers.iter().any(|l| l == "unspliced") {
        return Err(err(format!(
            "{}: velocity needs raw counts in layers[\"spliced\"] and layers[\"unspliced\"]; found layers: {}",
            input.display(),
            if layers.is_empty() { "none".to_string() } else { layers.join(", ") }
        )));
    }
    Ok(())
}

/// Which count matrices of `r` are stored as float64 (X's own counts when `x_own`, else the
/// spliced counts').
fn counts_float64(r: &H5adReader, x_own: bool) -> CountsFloat64 {
    let spliced = r.stored_float64("layers/spliced");
    CountsFloat64 {
        x: if x_own {
            r.stored_float64("X")
        } else {
            spliced
        },
        spliced,
        unspliced: r.stored_float64("layers/unspliced"),
    }
}

/// Reads the raw counts of `input` (layers spliced/unspliced, X when present).
pub fn read_counts(input: &Path) -> Result<RawCounts, PipelineError> {
    let r = H5adReader::open(input)?;
    check_count_layers(&r, input)?;
    // X hard-linked to the spliced counts (the simulator's files) is read once.
    let x_own = r.exists("X") && !r.same_object("X", "layers/spliced");
    Ok(RawCounts {
        spliced: r.csr("layers/spliced")?,
        unspliced: r.csr("layers/unspliced")?,
        x: if x_own { Some(r.csr("X")?) } else { None },
        float64: counts_float64(&r, x_own),
    })
}

/// The upstream steps from `input` to `output` (`None`: in place) in bounded memory: X is
/// log-normalised from its counts (the raw layers are read again afterwards rather than
/// held beside it) and written as soon as the embedding is done; the moments and velocity are
/// computed block of genes by block of genes and written as they come, so no dense
/// cell × gene matrix is ever held whole.
fn compute_and_write(
    input: &Path,
    output: Option<&Path>,
    spec: &UpstreamSpec,
    hook: &mut StageHook<'_>,
) -> Result<PrepareReport, PipelineError> {
    let mut clock = Clock::new(hook);
    let source = input.display().to_string();
    let r = H5adReader::open(input)?;
    let labeling = labeling_inputs(&r, spec, &source)?;
    let layers = r.keys("layers")?;
    let has_splicing =
        layers.iter().any(|l| l == "spliced") && layers.iter().any(|l| l == "unspliced");
    if let (Some(lab), false) = (&labeling, has_splicing) {
        drop(r);
        let (new, total, times, key) = lab.clone();
        return labeling_only(input, output, spec, clock, new, total, times, key);
    }
    check_count_layers(&r, input)?;
    let s = r.csr("layers/spliced")?;
    check_counts_in(&s, &source, SPLICED, &r)?;
    let u = r.csr("layers/unspliced")?;
    check_counts_in(&u, &source, UNSPLICED, &r)?;
    // X hard-linked to the spliced counts (the simulator's files) is not read again.
    let x_own = r.exists("X") && !r.same_object("X", "layers/spliced");
    let float64 = counts_float64(&r, x_own);
    let (s_f64, u_f64) = (
        spec.dtype.float64(float64.spliced),
        spec.dtype.float64(float64.unspliced),
    );
    clock.lap("read");
    super::check_cells(s.nrows(), spec.n_neighbors, &source)?;
    let usable = shared_genes(&s, &u, Some(spec.min_shared_counts), &source)?;
    let (n, g) = (s.nrows(), s.ncols());
    // Sizes over every input gene, before the gene filter (scVelo's initial sizes).
    let (size_s, size_u) = (CellSizes::of(&s), CellSizes::of(&u));
    drop(u);
    let (x, what) = if x_own {
        drop(s);
        let x = r.csr("X")?;
        check_x_shape(&x, n, g, &source)?;
        check_counts_in(&x, &source, "X", &r)?;
        (x, "X")
    } else {
        (s, "layers[\"spliced\"]")
    };
    let (logx, size_x, n_counts) = log_normalise(x, &usable, &source, what)?;
    let x_f64 = spec.dtype.float64(float64.x);
    let logx = as_stored(logx, x_f64);
    let sizes = ObsSizes {
        initial_size_unspliced: size_u.sizes.clone(),
        initial_size_spliced: size_s.sizes.clone(),
        initial_size: size_x.sizes,
        n_counts,
    };
    clock.lap("normalise X");
    let emb = embed(&logx, &usable, spec, &mut clock)?;
    let w = velocity::smoothing_graph(&emb.connectivities);
    let local = velocity::Locality::new(&emb.pca, &w, spec.seed);
    let mut report = PrepareReport {
        n_cells: n,
        n_genes: g,
        n_highly_variable: emb.hvg.iter().filter(|&&b| b).count(),
        n_velocity_genes: 0,
        timings: Vec::new(),
        labeling: None,
    };
    let hvg = emb.hvg.clone();
    let lab = match labeling {
        Some((new, total, times, key)) => {
            let genes: Vec<bool> = hvg.iter().zip(&usable).map(|(a, b)| *a && *b).collect();
            let (raw_s, raw_u) = (r.csr("layers/spliced")?, r.csr("layers/unspliced")?);
            let input = super::labeling::LabelingInput {
                new: &new,
                total: &total,
                connectivities: &emb.connectivities,
                distances: Some(&emb.distances),
                genes: &genes,
                has_splicing: true,
                splicing: Some((&raw_s, &raw_u)),
            };
            let res = super::labeling::labeling_stage(&input, times, key, &spec.labeling, &source)?;
            clock.lap("labeling moments + kinetics");
            Some(res)
        }
        None => None,
    };
    report.labeling = lab.as_ref().map(super::labeling::LabelingResult::describe);
    let mut edit = H5adEdit::new(input);
    if let Some(res) = lab {
        for (slot, e) in res.into_slots() {
            edit.set(&slot, e);
        }
    }
    set_embedding(&mut edit, emb, spec, input, &mut clock)?;
    for (slot, e) in sizes.slots() {
        edit.set(&slot, e);
    }
    if spec.velocity_mode == velocity::VelocityMode::Deterministic {
        edit.remove("layers/variance_velocity");
    }
    let produce = |early: &mut EarlySlots| -> Result<Vec<(String, Element)>, PipelineError> {
        early.write("X", stored_element(logx, x_f64))?;
        clock.lap("write X");
        let sn = as_stored(size_s.scale(r.csr("layers/spliced")?), s_f64);
        let un = as_stored(size_u.scale(r.csr("layers/unspliced")?), u_f64);
        clock.lap("read + normalise layers");
        let src = velocity::SmoothedCounts {
            w: &w,
            s: &sn,
            u: &un,
            local: local.as_ref(),
        };
        let fit = fit_into(
            early,
            &src,
            n,
            g,
            Some(&hvg),
            spec.velocity_mode,
            &spec.dynamics,
            true,
        )?;
        if !fit.velocity_genes.iter().any(|&b| b) {
            return Err(no_velocity_genes(&source).into());
        }
        clock.lap("moments + velocity");
        clock.parts(&fit);
        report.n_velocity_genes = fit.velocity_genes.iter().filter(|&&b| b).count();
        drop(w);
        early.write("layers/spliced", stored_element(sn, s_f64))?;
        early.write("layers/unspliced", stored_element(un, u_f64))?;
        Ok(velocity_slots(&fit))
    };
    match output {
        Some(out) => edit.write_to_with(out, produce)?,
        None => edit.write_in_place_with(produce)?,
    }
    clock.lap("write");
    report.timings = clock.stages;
    Ok(report)
}

/// The embedding's slots (PCA, kNN graph, highly variable genes, `uns["neighbors"]`) into
/// `edit`, after the UMAP layout of the graph when `spec` asks for one.
fn set_embedding(
    edit: &mut H5adEdit,
    emb: super::Embedding,
    spec: &UpstreamSpec,
    input: &Path,
    clock: &mut Clock<'_, '_>,
) -> Result<(), PipelineError> {
    if let Some(params) = &spec.umap {
        let u = super::umap::umap(&emb.connectivities, params)
            .map_err(|e| err(format!("{}: {e}", input.display())))?;
        clock.lap("umap");
        for (slot, e) in super::umap::umap_slots(&u, params) {
            edit.set(&slot, e);
        }
    }
    edit.set("obsm/X_pca", super::lossless_dense_element(&emb.pca));
    edit.set(
        "obsp/connectivities",
        super::lossless_element(emb.connectivities),
    );
    edit.set("obsp/distances", Element::Sparse(emb.distances.into()));
    edit.set("var/highly_variable", Element::from_bools(emb.hvg));
    edit.set("uns/neighbors", neighbors_params(spec));
    Ok(())
}

/// [`compute_and_write`] for labeling data without splicing layers: `total` stands for the
/// counts (X when the file has none of its own, the gene filter on counts shared by new and
/// total), then the embedding and the labeling stage; no splicing velocity.
#[allow(clippy::too_many_arguments)]
fn labeling_only(
    input: &Path,
    output: Option<&Path>,
    spec: &UpstreamSpec,
    mut clock: Clock<'_, '_>,
    new: Csr,
    total: Csr,
    times: Vec<f64>,
    key: String,
) -> Result<PrepareReport, PipelineError> {
    let source = input.display().to_string();
    let r = H5adReader::open(input)?;
    clock.lap("read");
    super::check_cells(total.nrows(), spec.n_neighbors, &source)?;
    let usable =
        shared_genes(&total, &new, Some(spec.min_shared_counts), &source).map_err(|e| {
            err(e
                .to_string()
                .replace("spliced and unspliced", "new and total"))
        })?;
    let (n, g) = (total.nrows(), total.ncols());
    let (x, what, x_f64) = if r.exists("X") {
        let x = r.csr("X")?;
        check_x_shape(&x, n, g, &source)?;
        check_counts_in(&x, &source, "X", &r)?;
        (x, "X", r.stored_float64("X"))
    } else {
        // The four-layer layouts' sum is float32 unless its layers are float64.
        let total_f64 = r.stored_float64("layers/total")
            || (!r.exists("layers/total") && r.stored_float64("layers/uu"));
        (total.clone(), "layers[\"total\"]", total_f64)
    };
    let (logx, _, _) = log_normalise(x, &usable, &source, what)?;
    let x_f64 = spec.dtype.float64(x_f64);
    let logx = as_stored(logx, x_f64);
    clock.lap("normalise X");
    let emb = embed(&logx, &usable, spec, &mut clock)?;
    let genes: Vec<bool> = emb.hvg.iter().zip(&usable).map(|(a, b)| *a && *b).collect();
    let lab_input = super::labeling::LabelingInput {
        new: &new,
        total: &total,
        connectivities: &emb.connectivities,
        distances: Some(&emb.distances),
        genes: &genes,
        has_splicing: false,
        splicing: None,
    };
    let res = super::labeling::labeling_stage(&lab_input, times, key, &spec.labeling, &source)?;
    clock.lap("labeling moments + kinetics");
    let mut report = PrepareReport {
        n_cells: n,
        n_genes: g,
        n_highly_variable: emb.hvg.iter().filter(|&&b| b).count(),
        n_velocity_genes: res.genes.iter().filter(|&&b| b).count(),
        timings: Vec::new(),
        labeling: Some(res.describe()),
    };
    let mut edit = H5adEdit::new(input);
    set_embedding(&mut edit, emb, spec, input, &mut clock)?;
    edit.set("X", stored_element(logx, x_f64));
    for (slot, e) in res.into_slots() {
        edit.set(&slot, e);
    }
    drop(r);
    match output {
        Some(out) => edit.write_to(out)?,
        None => edit.write_in_place()?,
    }
    clock.lap("write");
    report.timings = clock.stages;
    Ok(report)
}

/// What [`umap_in_file`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UmapReport {
    /// Cells laid out.
    pub n_cells: usize,
    /// The graph read (`obsp` key).
    pub graph: String,
    /// Epochs run.
    pub n_epochs: usize,
    /// Connected components of the graph (after dropping its weakest edges).
    pub n_components: usize,
    /// Fitted `a`, `b`.
    pub a: f64,
    /// See `a`.
    pub b: f64,
}

/// UMAP layout (scanpy's `sc.tl.umap`, [`super::umap`]) of `obsp[uns["neighbors"]
/// ["connectivities_key"]]` (default `connectivities`): writes `obsm["X_umap"]` and
/// `uns["umap"]` to `output`, or into `input` itself when `output` is `None` (atomically; for
/// files the caller owns, such as a run's output). The graph is never modified.
pub fn umap_in_file(
    input: &Path,
    output: Option<&Path>,
    params: &super::umap::UmapParams,
) -> Result<UmapReport, PipelineError> {
    let r = H5adReader::open(input)?;
    let key = match r.read("uns/neighbors/connectivities_key") {
        Ok(Element::Str(k)) => k,
        _ => "connectivities".to_string(),
    };
    let slot = format!("obsp/{key}");
    if !r.exists(&slot) {
        return Err(err(format!(
            "{}: {slot} is missing: UMAP lays out the kNN graph (run `cellfate preprocess` or scanpy's `pp.neighbors` first)",
            input.display()
        )));
    }
    let g = r.csr(&slot)?;
    let u = super::umap::umap(&g, params)
        .map_err(|e| err(format!("{}: {slot}: {e}", input.display())))?;
    drop(r);
    let mut edit = H5adEdit::new(input);
    for (slot, e) in super::umap::umap_slots(&u, params) {
        edit.set(&slot, e);
    }
    match output {
        Some(o) => edit.write_to(o)?,
        None => edit.write_in_place()?,
    }
    Ok(UmapReport {
        n_cells: g.nrows(),
        graph: key,
        n_epochs: u.n_epochs,
        n_components: u.n_components,
        a: u.a,
        b: u.b,
    })
}

/// Embeddings the figures prefer to the first principal components (see
/// `report::embedding`).
pub const FIGURE_EMBEDDINGS: [&str; 3] = ["X_umap", "X_tsne", "X_draw_graph_fa"];

/// Lays out `path`'s kNN graph with UMAP (default parameters, written into `path` itself)
/// when the file has none of [`FIGURE_EMBEDDINGS`] and has the graph: what `run` and `batch`
/// do before drawing figures, so that they show a UMAP rather than two principal
/// components. `None` when nothing was done.
pub fn umap_if_missing(path: &Path) -> Result<Option<UmapReport>, PipelineError> {
    let r = H5adReader::open(path)?;
    if FIGURE_EMBEDDINGS
        .iter()
        .any(|k| r.exists(&format!("obsm/{k}")))
        || !r.exists("obsp/connectivities")
    {
        return Ok(None);
    }
    drop(r);
    umap_in_file(path, None, &super::umap::UmapParams::default()).map(Some)
}
