//! In-silico perturbation, the numerical part: the kinetic route (a gene's change applied in
//! its fitted velocity model, velocities recomputed) and the shifts of fate probabilities
//! between an unperturbed and a perturbed run, with bootstrap confidence intervals. The
//! Jacobian route (Δv = J·Δx in the vector field's basis) is
//! `cellfate_vectorfield::perturb`; the root package reads files and recomputes kernels and
//! fate probabilities between the two.
//!
//! # The kinetic route
//! Every velocity model here has the form `v = β u − γ s` per gene: the steady-state and
//! stochastic models with β = 1 (`v = Mu − γ Ms`, scVelo's `var["velocity_gamma"]`), the
//! dynamical model with scVelo's `fit_beta` (β divided by the scaling, applied to the
//! unscaled `Mu`) and `fit_gamma`. Neither steady-state model has a transcription rate α, so a
//! change of transcription is a change of the unspliced abundance it sustains (`u = α/β` at
//! the new steady state of u, which is reached first: splicing is faster than degradation in
//! these fits):
//! - a knockout to level `L` (0: no transcription) sets `u' = γ L / β`, the unspliced level
//!   whose spliced steady state is `L`, so the gene relaxes towards `L`: `v' = γ (L − s)`;
//! - an overexpression by `k` scales the transcription, hence `u' = k u`: `v' = k β u − γ s`.
//!
//! Normalised data add one more term ([`add_composition`]): expression is normalised per cell
//! by the cell's total, so when gene `j` changes at rate δ the total changes at δ too, and
//! every other gene's normalised value moves at `−δ x_c / N` (`N` the cell's normalised
//! total, `x_c` the gene's normalised expression): a knockout of a highly expressed gene also
//! raises every other gene a little, as it would in the data. Without this term, a gene whose
//! normalised expression varies between states only through the composition of the library
//! (a housekeeping gene, lower where branch programs add RNA) looks like a marker of the
//! states with more RNA, and its knockout like a push towards them.
//!
//! In the dynamical model this is the change of α (`u' = α'/β`) for the cells' observed
//! unspliced abundance, not a re-integration of the model from the cell's fitted time: the
//! velocity is the instantaneous response once the unspliced RNA has followed the new
//! transcription rate.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// What is done to a gene.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Expression set to a level (0: knockout). sclsd's `perturbation_level`, dynamo's
    /// `expression`.
    Level(f64),
    /// Expression (transcription) multiplied by a factor (overexpression above 1).
    Fold(f64),
}

impl Change {
    /// Checks the value: a finite level ≥ 0, a finite fold > 0.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::Level(l) if l.is_finite() && l >= 0.0 => Ok(()),
            Self::Fold(k) if k.is_finite() && k > 0.0 => Ok(()),
            Self::Level(l) => Err(format!("level = {l}: expected a finite number >= 0")),
            Self::Fold(k) => Err(format!("fold = {k}: expected a finite number > 0")),
        }
    }

    /// A short description (`knockout`, `level 2.5`, `fold 3`).
    pub fn describe(&self) -> String {
        match *self {
            Self::Level(0.0) => "knockout".into(),
            Self::Level(l) => format!("level {l}"),
            Self::Fold(k) => format!("fold {k}"),
        }
    }
}

/// One gene's kinetics as the velocity model fitted them: `v = β u − γ s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GeneKinetics {
    /// β applied to the (unscaled) unspliced moments: 1 for the steady-state and stochastic
    /// models, `fit_beta` for the dynamical model.
    pub beta: f64,
    /// γ (`velocity_gamma`, or `fit_gamma`).
    pub gamma: f64,
}

impl GeneKinetics {
    /// Whether β and γ can carry a perturbation (finite, β > 0, γ ≥ 0).
    pub fn is_valid(&self) -> bool {
        self.beta.is_finite() && self.beta > 0.0 && self.gamma.is_finite() && self.gamma >= 0.0
    }
}

/// The perturbed velocity of one cell and gene, from its velocity `v`, its unspliced moment
/// `u` and the gene's kinetics (see the module docs): `v + β (u' − u)`.
pub fn kinetic_velocity(v: f64, u: f64, k: GeneKinetics, change: Change) -> f64 {
    let u_new = match change {
        Change::Level(l) => k.gamma * l / k.beta,
        Change::Fold(f) => f * u,
    };
    v + k.beta * (u_new - u)
}

/// Adds the compositional term of a change `delta` of gene `j`'s velocity to a cell's
/// velocity row (see the module docs): `v_c −= delta · x_c / total` for every gene `c ≠ j`
/// with finite values (`x` the cell's normalised expression, `total` its sum over all genes).
pub fn add_composition(v: &mut [f64], x: &[f64], total: f64, j: usize, delta: f64) {
    if !(total.is_finite() && total > 0.0 && delta.is_finite()) || delta == 0.0 {
        return;
    }
    let f = delta / total;
    for (c, (vc, xc)) in v.iter_mut().zip(x).enumerate() {
        if c != j && vc.is_finite() && xc.is_finite() {
            *vc -= f * xc;
        }
    }
}

/// Per-lineage mean shift of fate probability in one group of cells, with its bootstrap
/// confidence interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupShift {
    /// Group name (`all`, or a cluster).
    pub group: String,
    /// Cells in the group.
    pub n_cells: usize,
    /// Mean shift (perturbed − unperturbed) per lineage.
    pub mean: Vec<f64>,
    /// Lower bound of the confidence interval per lineage.
    pub ci_low: Vec<f64>,
    /// Upper bound per lineage.
    pub ci_high: Vec<f64>,
    /// Cells of the group whose most likely fate changed.
    pub n_changed: usize,
    /// Total-variation distance between the group's mean fate distributions before and after,
    /// `½ Σ_l |mean_l|`: the size of the shift.
    pub magnitude: f64,
}

/// Options of [`shift_summary`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootstrapOptions {
    /// Resamples (0: no interval; the bounds are then the mean).
    pub n_boot: usize,
    /// Confidence level of the percentile interval.
    pub level: f64,
    /// Seed (each group has its own stream seeded by `(seed, group)`).
    pub seed: u64,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self {
            n_boot: 1000,
            level: 0.95,
            seed: 0,
        }
    }
}

/// The most likely lineage of a row (first on ties), `None` for an empty row.
fn argmax(row: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (j, &x) in row.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((j, x));
        }
    }
    best.map(|b| b.0)
}

/// Whether each cell's most likely lineage differs between `before` and `after` (row-major
/// n × `l`).
pub fn changed_fates(before: &[f64], after: &[f64], l: usize) -> Vec<bool> {
    before
        .chunks(l)
        .zip(after.chunks(l))
        .map(|(a, b)| argmax(a) != argmax(b))
        .collect()
}

/// Mean shifts per group and lineage with percentile bootstrap intervals (cells resampled
/// with replacement within the group). `before`/`after` are row-major n × `l`; `groups`
/// lists each group's name and cells. Deterministic: each group's resamples come from its
/// own seeded stream, whatever the threads.
pub fn shift_summary(
    before: &[f64],
    after: &[f64],
    l: usize,
    groups: &[(String, Vec<usize>)],
    opts: &BootstrapOptions,
) -> Vec<GroupShift> {
    let changed = changed_fates(before, after, l);
    groups
        .iter()
        .enumerate()
        .map(|(gi, (name, cells))| {
            let shift = |i: usize, j: usize| after[i * l + j] - before[i * l + j];
            let m = cells.len();
            let mean: Vec<f64> = (0..l)
                .map(|j| cells.iter().map(|&i| shift(i, j)).sum::<f64>() / m.max(1) as f64)
                .collect();
            let (mut ci_low, mut ci_high) = (mean.clone(), mean.clone());
            if opts.n_boot > 0 && m > 1 {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (gi as u64),
                );
                let mut boots = vec![Vec::with_capacity(opts.n_boot); l];
                let mut sums = vec![0.0; l];
                for _ in 0..opts.n_boot {
                    sums.iter_mut().for_each(|s| *s = 0.0);
                    for _ in 0..m {
                        let i = cells[rng.random_range(0..m)];
                        for (j, s) in sums.iter_mut().enumerate() {
                            *s += shift(i, j);
                        }
                    }
                    for (b, s) in boots.iter_mut().zip(&sums) {
                        b.push(s / m as f64);
                    }
                }
                let alpha = (1.0 - opts.level) / 2.0;
                for (j, b) in boots.iter_mut().enumerate() {
                    b.sort_by(f64::total_cmp);
                    ci_low[j] = crate::stats::percentile_sorted(b, 100.0 * alpha);
                    ci_high[j] = crate::stats::percentile_sorted(b, 100.0 * (1.0 - alpha));
                }
            }
            GroupShift {
                group: name.clone(),
                n_cells: m,
                magnitude: 0.5 * mean.iter().map(|x| x.abs()).sum::<f64>(),
                mean,
                ci_low,
                ci_high,
                n_changed: cells.iter().filter(|&&i| changed[i]).count(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knockout_relaxes_the_gene_towards_its_level_and_fold_scales_the_unspliced() {
        let k = GeneKinetics {
            beta: 2.0,
            gamma: 0.5,
        };
        // v = β u − γ s with u = 1, s = 3: v = 0.5.
        let (u, s) = (1.0, 3.0);
        let v = k.beta * u - k.gamma * s;
        assert!((kinetic_velocity(v, u, k, Change::Level(0.0)) - (-k.gamma * s)).abs() < 1e-15);
        // Level L: the spliced steady state of the new unspliced level is L.
        let l = 7.0;
        let v_l = kinetic_velocity(v, u, k, Change::Level(l));
        assert!((v_l - k.gamma * (l - s)).abs() < 1e-12);
        // Fold 3: v' = 3 β u − γ s.
        let v_f = kinetic_velocity(v, u, k, Change::Fold(3.0));
        assert!((v_f - (3.0 * k.beta * u - k.gamma * s)).abs() < 1e-12);
        // Fold 1 changes nothing.
        assert_eq!(kinetic_velocity(v, u, k, Change::Fold(1.0)), v);
        assert!(Change::Fold(0.0).validate().is_err());
        assert!(Change::Level(-1.0).validate().is_err());
        assert!(Change::Level(f64::NAN).validate().is_err());
    }

    #[test]
    fn the_composition_term_keeps_the_normalised_total() {
        // A cell with total 10; gene 0 decays at rate 2: the others rise in proportion, and
        // the velocities' sum changes by exactly the gene's own change.
        let x = [4.0, 5.0, 1.0];
        let mut v = [0.0, 0.0, 0.0];
        v[0] += -2.0;
        add_composition(&mut v, &x, 10.0, 0, -2.0);
        assert!(
            (v[1] - 1.0).abs() < 1e-15 && (v[2] - 0.2).abs() < 1e-15,
            "{v:?}"
        );
        assert!((v.iter().sum::<f64>() - (-2.0 + 2.0 * 6.0 / 10.0)).abs() < 1e-15);
    }

    #[test]
    fn shifts_have_exact_means_and_intervals_that_cover_them() {
        // 4 cells, 2 lineages: cells 0 and 1 move 0.2 from lineage 0 to 1, cells 2 and 3
        // move nothing.
        let before = [0.6, 0.4, 0.55, 0.45, 0.3, 0.7, 0.5, 0.5];
        let after = [0.4, 0.6, 0.35, 0.65, 0.3, 0.7, 0.5, 0.5];
        let groups = vec![
            ("all".to_string(), vec![0, 1, 2, 3]),
            ("moved".to_string(), vec![0, 1]),
            ("still".to_string(), vec![2, 3]),
        ];
        let s = shift_summary(&before, &after, 2, &groups, &BootstrapOptions::default());
        assert!((s[0].mean[0] + 0.1).abs() < 1e-12 && (s[0].mean[1] - 0.1).abs() < 1e-12);
        assert!((s[0].magnitude - 0.1).abs() < 1e-12);
        assert!(s[0].ci_low[0] <= s[0].mean[0] && s[0].mean[0] <= s[0].ci_high[0]);
        assert!(s[0].ci_low[0] >= -0.2 - 1e-12 && s[0].ci_high[0] <= 1e-12);
        assert_eq!(s[0].n_changed, 2);
        assert_eq!((s[1].n_changed, s[2].n_changed), (2, 0));
        // No shift: the interval is a point at 0.
        assert_eq!(s[2].ci_low, vec![0.0, 0.0]);
        assert_eq!(s[2].ci_high, vec![0.0, 0.0]);
        // Deterministic.
        let again = shift_summary(&before, &after, 2, &groups, &BootstrapOptions::default());
        assert_eq!(s, again);
    }
}
