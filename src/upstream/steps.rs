//! The upstream steps one at a time on data in memory, under scVelo's and scanpy's names:
//! [`filter_and_normalize`], [`neighbors`] (scanpy's `pp.pca` + `pp.neighbors`), [`moments`]
//! and [`velocity()`] (with `mode = dynamical`, scVelo's `recover_dynamics` and
//! `velocity(mode="dynamical")` in one fit). Each returns its results with `into_slots`, the
//! AnnData slots and keys scVelo and scanpy write (`X`, `layers["Ms"]`, `var["velocity_gamma"]`,
//! ...), which the Python package puts into an in-memory AnnData.
//!
//! They are the pieces [`super::preprocess`] and the `.h5ad` steps chain, with the same
//! arithmetic in the same order: run one after another on the same counts they give the
//! results of `cellfate preprocess` bit for bit (tested through the Python package).
//! Where the CLI keeps every gene, these keep them too; subsetting the genes (scVelo's
//! `subset_highly_variable`) is the caller's choice ([`Normalized::gene_subset`]).

use nalgebra::DMatrix;

use cellfate_kernels::{interrupt, progress, Csr};

use super::velocity::{self, DynamicalSettings, VelocityFit, VelocityMode};
use super::{
    as_stored, check_counts, check_x_shape, dynamical_slots, highly_variable, invalid,
    neighbors_of, neighbors_params, normalise_x, pca_and_neighbors, shared_genes, stored_element,
    velocity_slots, CellSizes, Clock, CountsFloat64, LayerDtype, ObsSizes, RawCounts,
    UpstreamError, UpstreamSpec, SPLICED, UNSPLICED,
};
use crate::io::{DenseArray, Element, NumVec};

/// Settings of [`filter_and_normalize`], scVelo's names and defaults.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterNormalizeSpec {
    /// Genes with fewer counts shared by spliced and unspliced (in cells expressing both) are
    /// filtered out (`None`, scVelo's default: no filter).
    pub min_shared_counts: Option<f64>,
    /// Number of highly variable genes among those kept (`None`, scVelo's default: none
    /// selected).
    pub n_top_genes: Option<usize>,
    /// `log1p` of X after the normalisation (scVelo's `log=True`).
    pub log: bool,
    /// Storage type of the normalised matrices.
    pub dtype: LayerDtype,
}

impl Default for FilterNormalizeSpec {
    fn default() -> Self {
        Self {
            min_shared_counts: None,
            n_top_genes: None,
            log: true,
            dtype: LayerDtype::Auto,
        }
    }
}

/// What [`filter_and_normalize`] computes.
#[derive(Clone, Debug)]
pub struct Normalized {
    /// X normalised per cell (and `log1p`, by default).
    pub x: Csr,
    /// Spliced counts normalised per cell.
    pub spliced: Csr,
    /// Unspliced counts normalised per cell.
    pub unspliced: Csr,
    /// Which of the three are stored as float64 (the others hold float32 values).
    pub float64: CountsFloat64,
    /// The per-cell sizes scVelo records in `obs`.
    pub sizes: ObsSizes,
    /// Genes that pass the shared-counts filter (every gene without one).
    pub gene_filter: Vec<bool>,
    /// Highly variable genes among those (`None` when `n_top_genes` is not set).
    pub highly_variable: Option<Vec<bool>>,
}

impl Normalized {
    /// The genes scVelo keeps: the highly variable ones when selected, else those that pass
    /// the filter.
    pub fn gene_subset(&self) -> &[bool] {
        self.highly_variable.as_deref().unwrap_or(&self.gene_filter)
    }

    /// `X`, `layers["spliced"]`, `layers["unspliced"]`, `obs["initial_size_unspliced"]`,
    /// `["initial_size_spliced"]`, `["initial_size"]`, `["n_counts"]`, and
    /// `var["highly_variable"]` when selected.
    pub fn into_slots(self) -> Vec<(String, Element)> {
        let mut out = vec![
            ("X".to_string(), stored_element(self.x, self.float64.x)),
            (
                "layers/spliced".to_string(),
                stored_element(self.spliced, self.float64.spliced),
            ),
            (
                "layers/unspliced".to_string(),
                stored_element(self.unspliced, self.float64.unspliced),
            ),
        ];
        out.extend(self.sizes.slots());
        if let Some(h) = self.highly_variable {
            out.push(("var/highly_variable".into(), Element::from_bools(h)));
        }
        out
    }
}

/// scVelo's `pp.filter_and_normalize` on raw counts in memory (see the parent module for the
/// rules): the shared-counts gene filter, each matrix normalised per cell by its sizes over
/// every input gene, `log1p` of X, and scanpy's `seurat` highly variable genes among the genes
/// kept. `raw.x` is X's counts (the spliced counts when `None`); `source` names the data in
/// errors. No gene is dropped here ([`Normalized::gene_subset`]).
pub fn filter_and_normalize(
    raw: RawCounts,
    spec: &FilterNormalizeSpec,
    source: &str,
) -> Result<Normalized, UpstreamError> {
    let RawCounts {
        spliced: s,
        unspliced: u,
        x,
        float64: counts_f64,
    } = raw;
    check_counts(&s, source, SPLICED)?;
    check_counts(&u, source, UNSPLICED)?;
    let usable = shared_genes(&s, &u, spec.min_shared_counts, source)?;
    let (n, g) = (s.nrows(), s.ncols());
    if let Some(x) = &x {
        check_x_shape(x, n, g, source)?;
        check_counts(x, source, "X")?;
    }
    let (size_s, size_u) = (CellSizes::of(&s), CellSizes::of(&u));
    let float64 = CountsFloat64 {
        x: spec.dtype.float64(if x.is_some() {
            counts_f64.x
        } else {
            counts_f64.spliced
        }),
        spliced: spec.dtype.float64(counts_f64.spliced),
        unspliced: spec.dtype.float64(counts_f64.unspliced),
    };
    let (what, x) = match x {
        Some(x) => ("X", x),
        None => ("layers[\"spliced\"]", s.clone()),
    };
    let (xn, size_x, n_counts) = normalise_x(x, &usable, source, what, spec.log)?;
    let xn = as_stored(xn, float64.x);
    let highly_variable = spec.n_top_genes.map(|k| {
        if spec.log {
            highly_variable(&xn, &usable, k)
        } else {
            // The dispersions are those of the log data, as scVelo's selection.
            let mut logx = xn.clone();
            logx.data_mut().iter_mut().for_each(|v| *v = v.ln_1p());
            highly_variable(&logx, &usable, k)
        }
    });
    Ok(Normalized {
        x: xn,
        spliced: as_stored(size_s.scale(s), float64.spliced),
        unspliced: as_stored(size_u.scale(u), float64.unspliced),
        float64,
        sizes: ObsSizes {
            initial_size_unspliced: size_u.sizes,
            initial_size_spliced: size_s.sizes,
            initial_size: size_x.sizes,
            n_counts,
        },
        gene_filter: usable,
        highly_variable,
    })
}

/// What [`neighbors`] computes.
#[derive(Clone, Debug)]
pub struct Neighbors {
    /// PCA scores (cells × components), when computed here.
    pub pca: Option<DMatrix<f64>>,
    /// kNN distances (cells × cells).
    pub distances: Csr,
    /// UMAP connectivities (cells × cells).
    pub connectivities: Csr,
    /// Neighbours (counting the cell itself) and components, for `uns["neighbors"]`.
    pub spec: UpstreamSpec,
}

impl Neighbors {
    /// `obsm["X_pca"]` (when computed), `obsp["distances"]`, `obsp["connectivities"]`,
    /// `uns["neighbors"]`.
    pub fn into_slots(self) -> Vec<(String, Element)> {
        let mut out = Vec::new();
        if let Some(p) = &self.pca {
            out.push(("obsm/X_pca".to_string(), super::lossless_dense_element(p)));
        }
        out.push((
            "obsp/distances".into(),
            Element::Sparse(self.distances.into()),
        ));
        out.push((
            "obsp/connectivities".into(),
            super::lossless_element(self.connectivities),
        ));
        out.push(("uns/neighbors".into(), neighbors_params(&self.spec)));
        out
    }
}

/// scanpy's `pp.pca` + `pp.neighbors` (UMAP connectivities) as `cellfate preprocess` runs
/// them: the PCA of X's columns `genes` (every gene when `None`) with `spec.n_pcs`
/// components, or the given `pca` scores (their first `n_pcs` columns), then
/// `spec.n_neighbors` neighbours (the cell included).
pub fn neighbors(
    x: Option<&Csr>,
    genes: Option<&[bool]>,
    pca: Option<&DMatrix<f64>>,
    spec: &UpstreamSpec,
) -> Result<Neighbors, UpstreamError> {
    if spec.n_neighbors < 2 {
        return Err(invalid(format!(
            "n_neighbors = {}: expected at least 2 (the cell and one neighbour)",
            spec.n_neighbors
        )));
    }
    let mut hook = |_: &super::StageTiming| {};
    let mut clock = Clock::new(&mut hook);
    let (pca, (distances, connectivities)) = match (pca, x) {
        (Some(p), _) => {
            super::check_cells(p.nrows(), spec.n_neighbors, "obsm[\"X_pca\"]")?;
            let k = spec.n_pcs.min(p.ncols());
            if k == 0 {
                return Err(invalid("obsm[\"X_pca\"] has no column"));
            }
            let scores = p.columns(0, k).into_owned();
            (None, neighbors_of(&scores, spec, &mut clock)?)
        }
        (None, Some(x)) => {
            let all;
            let genes = match genes {
                Some(gs) if gs.len() != x.ncols() => {
                    return Err(invalid(format!(
                        "var[\"highly_variable\"] has {} values for {} genes",
                        gs.len(),
                        x.ncols()
                    )))
                }
                Some(gs) => gs,
                None => {
                    all = vec![true; x.ncols()];
                    &all
                }
            };
            let (p, d, c) = pca_and_neighbors(x, genes, spec, &mut clock)?;
            (Some(p), (d, c))
        }
        (None, None) => return Err(invalid("neighbors: needs X or obsm[\"X_pca\"]")),
    };
    Ok(Neighbors {
        pca,
        distances,
        connectivities,
        spec: spec.clone(),
    })
}

/// First moments, row-major float32 cells × genes.
#[derive(Clone, Debug)]
pub struct Moments {
    /// `layers["Ms"]`.
    pub ms: Vec<f32>,
    /// `layers["Mu"]`.
    pub mu: Vec<f32>,
    /// Cells.
    pub n: usize,
    /// Genes.
    pub g: usize,
}

impl Moments {
    /// `layers["Ms"]`, `layers["Mu"]` (float32, as scVelo writes them).
    pub fn into_slots(self) -> Vec<(String, Element)> {
        vec![
            ("layers/Ms".into(), f32_matrix(self.n, self.g, self.ms)),
            ("layers/Mu".into(), f32_matrix(self.n, self.g, self.mu)),
        ]
    }
}

/// A row-major float32 matrix as an element.
fn f32_matrix(n: usize, g: usize, v: Vec<f32>) -> Element {
    Element::Dense(DenseArray {
        shape: vec![n, g],
        data: NumVec::F32(v),
    })
}

/// Checks that a cell × cell graph and two cell × gene matrices fit together.
fn check_shapes(conn: &Csr, s: &Csr, u: &Csr) -> Result<(), UpstreamError> {
    let n = s.nrows();
    if (u.nrows(), u.ncols()) != (n, s.ncols()) {
        return Err(invalid(format!(
            "layers spliced ({n}×{}) and unspliced ({}×{}) differ in shape",
            s.ncols(),
            u.nrows(),
            u.ncols()
        )));
    }
    if (conn.nrows(), conn.ncols()) != (n, n) {
        return Err(invalid(format!(
            "obsp[\"connectivities\"] is {}×{}: expected {n}×{n} (one row and column per cell)",
            conn.nrows(),
            conn.ncols()
        )));
    }
    Ok(())
}

/// scVelo's `pp.moments`: `Ms`, `Mu`, the normalised counts averaged over each cell and its
/// neighbours in `connectivities` (block of genes by block of genes, as the CLI).
pub fn moments(conn: &Csr, spliced: &Csr, unspliced: &Csr) -> Result<Moments, UpstreamError> {
    use velocity::MomentSource;
    check_shapes(conn, spliced, unspliced)?;
    let (n, g) = (spliced.nrows(), spliced.ncols());
    let w = velocity::smoothing_graph(conn);
    let src = velocity::SmoothedCounts {
        w: &w,
        s: spliced,
        u: unspliced,
        local: None,
    };
    let mut ms = vec![0.0f32; n * g];
    let mut mu = vec![0.0f32; n * g];
    let step = velocity::block_genes(n);
    progress::start("moments (genes)", g as u64);
    let mut start = 0;
    while start < g {
        if interrupt::requested() {
            return Err(UpstreamError::Interrupted);
        }
        let r = start..(start + step).min(g);
        let b = src.block(r.clone())?;
        let (bs, bu) = src.first(&b)?;
        velocity::scatter_columns(&mut ms, g, &r, &bs);
        velocity::scatter_columns(&mut mu, g, &r, &bu);
        progress::advance(r.len() as u64);
        start = r.end;
    }
    Ok(Moments { ms, mu, n, g })
}

/// scVelo's `pp.moments` on the count layers as an AnnData holds them: raw counts (every
/// value an integer, scVelo's test) are first normalised per cell to their median size
/// ([`CellSizes`]) and returned as `layers["spliced"]`/`["unspliced"]` before `Ms` and `Mu`,
/// each in float32 unless `float64` says it is kept in float64 (its counts' type, as scVelo
/// keeps it); normalised layers are used as they are.
pub fn moments_of_counts(
    conn: &Csr,
    spliced: Csr,
    unspliced: Csr,
    float64: CountsFloat64,
) -> Result<Vec<(String, Element)>, UpstreamError> {
    check_counts(&spliced, "adata", SPLICED)?;
    check_counts(&unspliced, "adata", UNSPLICED)?;
    let is_counts = |m: &Csr| m.data().iter().all(|v| v.fract() == 0.0);
    let raw = is_counts(&spliced) && is_counts(&unspliced);
    let (s, u) = if raw {
        let (cs, cu) = (CellSizes::of(&spliced), CellSizes::of(&unspliced));
        (
            as_stored(cs.scale(spliced), float64.spliced),
            as_stored(cu.scale(unspliced), float64.unspliced),
        )
    } else {
        (spliced, unspliced)
    };
    let m = moments(conn, &s, &u)?;
    let mut out = Vec::new();
    if raw {
        out.push(("layers/spliced".into(), stored_element(s, float64.spliced)));
        out.push((
            "layers/unspliced".into(),
            stored_element(u, float64.unspliced),
        ));
    }
    out.extend(m.into_slots());
    Ok(out)
}

/// The inputs of [`velocity()`].
#[derive(Clone, Copy, Debug)]
pub struct VelocityInput<'a> {
    /// `layers["Ms"]`, row-major n × g.
    pub ms: &'a [f32],
    /// `layers["Mu"]`, row-major n × g.
    pub mu: &'a [f32],
    /// Cells.
    pub n: usize,
    /// Genes.
    pub g: usize,
    /// The normalised `layers["spliced"]` and `["unspliced"]` (the stochastic model's second
    /// moments; without them it falls back to the deterministic model, as the CLI does).
    pub counts: Option<(&'a Csr, &'a Csr)>,
    /// `obsp["connectivities"]` (second moments; the dynamical model's smoothing).
    pub connectivities: Option<&'a Csr>,
    /// `var["highly_variable"]`: restricts the velocity genes.
    pub highly_variable: Option<&'a [bool]>,
}

/// scVelo's `tl.velocity(mode=...)` on first moments in memory (the CLI's `cellfate
/// velocity`): the steady-state, stochastic or dynamical model per gene, block of genes by
/// block of genes. The dynamical model is scVelo's `recover_dynamics` followed by
/// `velocity(mode="dynamical")`.
pub fn velocity(
    input: &VelocityInput<'_>,
    mode: VelocityMode,
    dynamics: &DynamicalSettings,
) -> Result<VelocityFit, UpstreamError> {
    let (n, g) = (input.n, input.g);
    for (what, m) in [("layers[\"Ms\"]", input.ms), ("layers[\"Mu\"]", input.mu)] {
        if m.len() != n * g {
            return Err(invalid(format!(
                "{what} holds {} values: expected {n}×{g}",
                m.len()
            )));
        }
        if let Some(k) = m.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "{what}: expected finite first moments, found {} at cell {}, gene {} (recompute them with pp.moments)",
                m[k],
                k / g.max(1),
                k % g.max(1)
            )));
        }
    }
    if let Some(h) = input.highly_variable {
        if h.len() != g {
            return Err(invalid(format!(
                "var[\"highly_variable\"] has {} values for {g} genes",
                h.len()
            )));
        }
    }
    let w = input.connectivities.map(velocity::smoothing_graph);
    if let (Some(c), Some((s, u))) = (input.connectivities, input.counts) {
        check_shapes(c, s, u)?;
        if (s.nrows(), s.ncols()) != (n, g) {
            return Err(invalid(format!(
                "layers spliced ({}×{}) and Ms ({n}×{g}) differ in shape",
                s.nrows(),
                s.ncols()
            )));
        }
    } else if let Some(c) = input.connectivities {
        if (c.nrows(), c.ncols()) != (n, n) {
            return Err(invalid(format!(
                "obsp[\"connectivities\"] is {}×{}: expected {n}×{n}",
                c.nrows(),
                c.ncols()
            )));
        }
    }
    if mode == VelocityMode::Dynamical && w.is_none() {
        return Err(invalid(
            "the dynamical model smooths its states and times over obsp[\"connectivities\"], which is missing: compute the kNN graph first (pp.neighbors or pp.moments)",
        ));
    }
    let second = match (&w, input.counts) {
        (Some(w), Some((s, u))) if mode == VelocityMode::Stochastic => {
            Some(move |idx: &[usize]| velocity::second_moments(w, s, u, idx))
        }
        _ => None,
    };
    let second_ref = second.as_ref().map(|f| f as &velocity::SecondMoments<'_>);
    let src = velocity::StoredMoments {
        ms: input.ms,
        mu: input.mu,
        n,
        g,
        second: second_ref,
        graph: w.as_ref(),
    };
    let mut whole = velocity::WholeLayers::new(n, g, false);
    progress::start("velocity (genes)", g as u64);
    let fit = velocity::fit_velocity_blocks(
        &src,
        n,
        g,
        input.highly_variable,
        mode,
        dynamics,
        &mut |b| {
            whole.put(&b);
            progress::advance(b.genes.len() as u64);
            if interrupt::requested() {
                return Err(UpstreamError::Interrupted);
            }
            Ok(())
        },
    )?;
    Ok(whole.into_fit(fit))
}

impl VelocityFit {
    /// scVelo's slots of the fit: `layers["velocity"]` (and `["variance_velocity"]` for the
    /// stochastic model), `var["velocity_gamma"]`, `["velocity_qreg_ratio"]`,
    /// `["velocity_r2"]`, `["velocity_genes"]`, `uns["velocity_params"]`; for the dynamical
    /// model `layers["fit_t"]`, `["fit_tau"]`, `["fit_tau_"]`, `["velocity_u"]`, the
    /// `var["fit_*"]` parameters, `varm["loss"]` and `uns["recover_dynamics"]`.
    pub fn into_slots(self) -> Vec<(String, Element)> {
        let (n, g) = (
            self.velocity
                .len()
                .checked_div(self.gamma.len())
                .unwrap_or(0),
            self.gamma.len(),
        );
        let genes = velocity::GeneFit {
            mode: self.mode,
            gamma: self.gamma,
            qreg_ratio: self.qreg_ratio,
            r2: self.r2,
            velocity_genes: self.velocity_genes,
            dynamical: self.dynamical,
            dynamical_skipped: Vec::new(),
            seconds: [0.0; 4],
        };
        let mut out = vec![(
            "layers/velocity".to_string(),
            f32_matrix(n, g, self.velocity),
        )];
        if let Some(v) = self.variance_velocity {
            out.push(("layers/variance_velocity".into(), f32_matrix(n, g, v)));
        }
        if let Some(layers) = self.dynamical_layers {
            for (key, l) in ["fit_t", "fit_tau", "fit_tau_", "velocity_u"]
                .into_iter()
                .zip(layers)
            {
                out.push((format!("layers/{key}"), f32_matrix(n, g, l)));
            }
        }
        if genes.mode == VelocityMode::Dynamical {
            out.extend(dynamical_slots(&genes));
        } else {
            out.extend(velocity_slots(&genes));
        }
        out
    }
}
