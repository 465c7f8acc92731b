//! scVelo 0.3.4's dynamical model of splicing kinetics (`tl.recover_dynamics`), one gene at
//! a time, re-derived from its documented semantics (`../shared/docs/velocity-and-figures-
//! notes.md` §1):
//!
//! - the model: induction from (0, 0) with transcription rate α until the switching time
//!   t_, then repression (α = 0) from the state reached at t_; unspliced
//!   u(τ) = u₀e^{−βτ} + α/β (1 − e^{−βτ}), spliced s(τ) = s₀e^{−γτ} + α/γ (1 − e^{−γτ}) +
//!   c (e^{−γτ} − e^{−βτ}) with c = (α − βu₀)/(γ − β) (and 0 where γ = β, as scVelo does);
//! - the E-step assigns every cell a time on the induction or the repression branch (or one
//!   of the two steady states), by inverting the solution (explicit) or by projecting onto
//!   500 points of each branch (projection, when β < γ after the pre-training), with scVelo's
//!   gap closing of the time increments and the kNN smoothing of the branch distances;
//! - the M-step refits (t_, α), (t_, β, scaling), (α, γ), t_ and (t_, α, β, γ) with two
//!   SciPy Nelder–Mead iterations each, each candidate accepted only when the summed loss
//!   drops, with scVelo's switching-time heuristic;
//! - the likelihood, the variance, and the alignment of every gene's time to a total of 20.
//!
//! Deviations, on purpose: computations in float64 throughout (scVelo computes in the
//! layers' float32 where they are float32, and its kNN weights are float32); γ = β gives the
//! coupling term 0 (scVelo's `invert` gives NaN·0 = NaN there; β starts at 1 and γ carries
//! +1e-6, so it is not reached in practice). Basal transcription (`fit_basal_transcription`)
//! and the differential-kinetics test are not implemented.

use crate::fit_graph::FitGraph;
use crate::nelder_mead::NelderMead;
use crate::stats::{argmin, linspace, mean, percentile, std, test_bimodality};

/// How cell times are assigned once the pre-training ends (scVelo's `assignment_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentMode {
    /// Projection onto the curve when β < γ, explicit inversion otherwise (the default).
    #[default]
    Projection,
    /// Always the explicit inversion of the solution.
    Explicit,
    /// Always the projection onto the curve.
    FullProjection,
}

/// Options of the dynamical model, scVelo's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicsOptions {
    /// EM iterations (`max_iter`, 10): each of the five fits runs `max_iter / 5` simplex
    /// iterations.
    pub max_iter: usize,
    /// Fit the scaling of unspliced to spliced (`fit_scaling`, true).
    pub fit_scaling: bool,
    /// Model the two steady states explicitly (`fit_steady_states`, true).
    pub fit_steady_states: bool,
    /// Time assignment after the pre-training (`assignment_mode`, projection).
    pub assignment_mode: AssignmentMode,
    /// Upper percentile of the cells used in the fit (`perc`, 99).
    pub perc: f64,
    /// Total time every gene is aligned to (`t_max`, 20); `None` skips the alignment.
    pub t_max: Option<f64>,
}

impl Default for DynamicsOptions {
    fn default() -> Self {
        Self {
            max_iter: 10,
            fit_scaling: true,
            fit_steady_states: true,
            assignment_mode: AssignmentMode::Projection,
            perc: 99.0,
            t_max: Some(20.0),
        }
    }
}

/// One gene's fit, under scVelo's `var` names (`fit_alpha`, ...): rates after the
/// alignment, β divided by the scaling as scVelo stores it; per-cell times `fit_t` (kNN
/// smoothed, aligned), `fit_tau`, `fit_tau_`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneDynamics {
    /// `fit_alpha`.
    pub alpha: f64,
    /// `fit_beta` (β / scaling).
    pub beta: f64,
    /// `fit_gamma`.
    pub gamma: f64,
    /// `fit_t_`, the switching time.
    pub t_: f64,
    /// `fit_scaling`.
    pub scaling: f64,
    /// `fit_std_u`.
    pub std_u: f64,
    /// `fit_std_s`.
    pub std_s: f64,
    /// `fit_likelihood`.
    pub likelihood: f64,
    /// `fit_u0` (0: no basal transcription).
    pub u0: f64,
    /// `fit_s0` (0).
    pub s0: f64,
    /// `fit_pval_steady`.
    pub pval_steady: f64,
    /// `fit_steady_u` (× scaling).
    pub steady_u: f64,
    /// `fit_steady_s`.
    pub steady_s: f64,
    /// `fit_variance`.
    pub variance: f64,
    /// `fit_alignment_scaling` (NaN where it is 1, as scVelo writes it).
    pub alignment_scaling: f64,
    /// `layers["fit_t"]` of this gene.
    pub t: Vec<f64>,
    /// `layers["fit_tau"]`.
    pub tau: Vec<f64>,
    /// `layers["fit_tau_"]`.
    pub tau_: Vec<f64>,
    /// The accepted losses, in order (`varm["loss"]`).
    pub loss: Vec<f64>,
}

/// The fitted trajectory of a gene in the phase plane (scVelo's `plot` of the dynamical
/// model): `n` points of induction from (0, 0) up to the switching time `t_`, then `n` points
/// of repression from the switch until the unspliced level has fallen to 1 % of its value
/// there. `alpha`, `beta`, `gamma`, `t_`, `scaling` as stored (`fit_*`, β divided by the
/// scaling); returns `(spliced, unspliced)` in the data's units (u multiplied back by the
/// scaling). Empty when the parameters are not finite and positive.
pub fn phase_curve(
    alpha: f64,
    beta: f64,
    gamma: f64,
    t_: f64,
    scaling: f64,
    n: usize,
) -> Vec<(f64, f64)> {
    let ok = |x: f64| x.is_finite() && x > 0.0;
    if !(ok(alpha) && ok(beta) && ok(gamma) && ok(t_) && ok(scaling)) || n < 2 {
        return Vec::new();
    }
    // scVelo fits u / scaling with rate β·scaling; `fit_beta` is that rate / scaling.
    let b = beta * scaling;
    let mut out = Vec::with_capacity(2 * n);
    for k in 0..n {
        let tau = t_ * k as f64 / (n - 1) as f64;
        let (u, s) = solution(tau, 0.0, 0.0, alpha, b, gamma);
        out.push((s, u * scaling));
    }
    let (u_, s_) = solution(t_, 0.0, 0.0, alpha, b, gamma);
    // u decays as exp(-b τ): 1 % left after ln(100) / b.
    let t_end = 100f64.ln() / b;
    for k in 1..=n {
        let tau = t_end * k as f64 / n as f64;
        let (u, s) = solution(tau, u_, s_, 0.0, b, gamma);
        out.push((s, u * scaling));
    }
    out
}

/// The induction/repression solution at time τ from (u₀, s₀) with rates α, β, γ.
#[inline]
fn solution(tau: f64, u0: f64, s0: f64, alpha: f64, beta: f64, gamma: f64) -> (f64, f64) {
    let expu = (-beta * tau).exp();
    let exps = (-gamma * tau).exp();
    let u = u0 * expu + alpha / beta * (1.0 - expu);
    let c = (alpha - u0 * beta) * invert(gamma - beta);
    let s = s0 * exps + alpha / gamma * (1.0 - exps) + c * (exps - expu);
    (u, s)
}

#[inline]
fn invert(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        1.0 / x
    }
}

/// ln(clip(x, 1e−6, 1 − 1e−6)), NaN kept.
#[inline]
fn clipped_log(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    x.clamp(1e-6, 1.0 - 1e-6).ln()
}

/// scVelo's `tau_inv`: the time at which the branch from (u₀, s₀) reaches (u, s), from u
/// alone when γ ≥ β, from the combination s − β'u otherwise.
#[inline]
#[allow(clippy::too_many_arguments)]
fn tau_inv(u: f64, s: f64, u0: f64, s0: f64, alpha: f64, beta: f64, gamma: f64) -> f64 {
    if gamma >= beta {
        let uinf = alpha / beta;
        -1.0 / beta * clipped_log((u - uinf) / (u0 - uinf))
    } else {
        let beta_ = beta * invert(gamma - beta);
        let xinf = alpha / gamma - beta_ * (alpha / beta);
        -1.0 / gamma * clipped_log((s - beta_ * u - xinf) / (s0 - beta_ * u0 - xinf))
    }
}

/// `np.clip(x, lo, hi)` = min(max(x, lo), hi) with NaN kept.
#[inline]
fn np_clip(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() || lo.is_nan() || hi.is_nan() {
        return f64::NAN;
    }
    x.max(lo).min(hi)
}

/// NumPy's max over a slice (NaN propagates; −∞ when empty).
fn nan_max(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut m = f64::NEG_INFINITY;
    for x in v {
        if x.is_nan() {
            return f64::NAN;
        }
        m = m.max(x);
    }
    m
}

/// The five parameters; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default)]
struct Change {
    alpha: Option<f64>,
    beta: Option<f64>,
    gamma: Option<f64>,
    scaling: Option<f64>,
    t_: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Pars {
    alpha: f64,
    beta: f64,
    gamma: f64,
    scaling: f64,
    t_: f64,
}

/// A time assignment: time t and branch o (1 induction, 0 repression).
#[derive(Debug, Clone)]
struct Assignment {
    t: Vec<f64>,
    o: Vec<u8>,
}

/// Which cells a loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cells {
    Weighted,
    Upper,
}

struct Model<'a> {
    u: &'a [f64],
    s: &'a [f64],
    /// W and Wᵀ in the fit's cell order (the order of `u` and `s`).
    graph: Option<&'a FitGraph>,
    weighted: Vec<usize>,
    upper: Vec<usize>,
    std_u: f64,
    std_s: f64,
    p: Pars,
    asg: Assignment,
    loss: Vec<f64>,
    steady_state_ratio: Option<f64>,
    /// Projection allowed (after the pre-training, per the options).
    mode: Option<AssignmentMode>,
    fit_steady_states: bool,
    /// W·s and W·s² (the spliced moments the steady-state distances expand into).
    ws: Vec<f64>,
    ws2: Vec<f64>,
    /// u / scaling, W·ub and W·ub² for one scaling.
    scaled: std::cell::RefCell<Option<Scaled>>,
    /// The last few assignments by their parameters and mode (see [`Model::assign`]).
    memo: std::cell::RefCell<Vec<(MemoKey, Assignment)>>,
    steady_u: f64,
    steady_s: f64,
}

/// What an assignment depends on besides the gene's data: the parameters' bits and the
/// assignment mode.
type MemoKey = ([u64; 5], Option<AssignmentMode>);

/// Assignments kept by [`Model::assign`] (least recently used out): the accepted one and
/// the latest candidates.
const MEMO_SIZE: usize = 3;

/// What depends on the scaling only: ub = u / scaling and, with a graph, W·ub and W·ub².
struct Scaled {
    scaling: f64,
    ub: Vec<f64>,
    wub: Vec<f64>,
    wub2: Vec<f64>,
}

/// Sorts in [`f64::total_cmp`]'s order through unsigned integer keys with the same order
/// (the bit pattern with the sign bit toggled and, for negative values, the magnitude bits
/// flipped), which sort faster than the comparator.
fn sort_total(v: &mut [f64]) {
    const SIGN: u64 = 1 << 63;
    let key = |b: u64| (b ^ ((((b as i64) >> 63) as u64) >> 1)) ^ SIGN;
    let unkey = |k: u64| {
        let b = k ^ SIGN;
        b ^ ((((b as i64) >> 63) as u64) >> 1)
    };
    let mut keys: Vec<u64> = v.iter().map(|x| key(x.to_bits())).collect();
    keys.sort_unstable();
    for (x, k) in v.iter_mut().zip(keys) {
        *x = f64::from_bits(unkey(k));
    }
}

/// scVelo's `adjust_increments` for two branches: sorted times, increments from 0, an upper
/// bound of 3 × the 99.5th percentile of all increments; every larger increment is
/// subtracted from all times at or after it. `b` may be empty (one branch only).
fn adjust_increments(a: &mut [f64], b: &mut [f64]) {
    let sorted = |v: &[f64]| -> Vec<f64> {
        let mut s = v.to_vec();
        sort_total(&mut s);
        s
    };
    let (sa, sb) = (sorted(a), sorted(b));
    let incr = |s: &[f64]| -> Vec<f64> {
        let mut prev = 0.0;
        s.iter()
            .map(|&x| {
                let d = x - prev;
                prev = x;
                d
            })
            .collect()
    };
    let (da, db) = (incr(&sa), incr(&sb));
    let mut pooled: Vec<f64> = da.iter().chain(&db).copied().collect();
    let ub = 3.0 * crate::stats::percentile_select(&mut pooled, 99.5);
    for (v, s, d) in [(a, &sa, &da), (b, &sb, &db)] {
        // Gaps above the bound, by position in the sorted order; each cell loses every gap
        // at or below its own time.
        let gaps: Vec<(f64, f64)> = s
            .iter()
            .zip(d.iter())
            .filter(|&(_, &dt)| dt > ub)
            .map(|(&ti, &dt)| (ti, dt))
            .collect();
        if gaps.is_empty() {
            continue;
        }
        for x in v.iter_mut() {
            let orig = *x;
            for &(ti, dt) in &gaps {
                if orig >= ti {
                    *x -= dt;
                }
            }
        }
    }
}

impl<'a> Model<'a> {
    fn vars(&self, c: Change) -> Pars {
        let t_ = match c.t_ {
            Some(t) if t != 0.0 => t,
            _ => self.p.t_,
        };
        Pars {
            alpha: c.alpha.unwrap_or(self.p.alpha),
            beta: c.beta.unwrap_or(self.p.beta),
            gamma: c.gamma.unwrap_or(self.p.gamma),
            scaling: c.scaling.unwrap_or(self.p.scaling),
            t_,
        }
    }

    /// `assign_tau`: the branch times of every cell (u already divided by the scaling).
    fn assign_tau(&self, ub: &[f64], p: &Pars, u0_: f64, s0_: f64) -> (Vec<f64>, Vec<f64>) {
        let (alpha, beta, gamma, t_) = (p.alpha, p.beta, p.gamma, p.t_);
        let s = self.s;
        let project = match self.mode {
            Some(AssignmentMode::FullProjection) => true,
            Some(AssignmentMode::Projection) => beta < gamma,
            _ => false,
        };
        if project {
            let n = ub.len();
            let umin = ub
                .iter()
                .zip(s)
                .filter(|&(_, &s)| s > 0.0)
                .map(|(&u, _)| u)
                .fold(f64::INFINITY, f64::min);
            // tau_inv(u) of the repression branch (α = 0, u only).
            let t0 = -1.0 / beta * clipped_log(umin / u0_);
            let num = (n / 5).clamp(200, 500);
            let tp = linspace(0.0, t_, num);
            let tp_: Vec<f64> = linspace(0.0, t0, num)[1..].to_vec();
            let xt: Vec<(f64, f64)> = tp
                .iter()
                .map(|&t| solution(t, 0.0, 0.0, alpha, beta, gamma))
                .collect();
            let xt_: Vec<(f64, f64)> = tp_
                .iter()
                .map(|&t| solution(t, u0_, s0_, 0.0, beta, gamma))
                .collect();
            // np.argmin of the squared distances: the first minimum (a NaN wins).
            let nearest = |curve: &[(f64, f64)], u: f64, s: f64| -> usize {
                let mut best = 0;
                let mut bd = f64::INFINITY;
                for (k, &(cu, cs)) in curve.iter().enumerate() {
                    let d = (cu - u) * (cu - u) + (cs - s) * (cs - s);
                    if d.is_nan() {
                        return k;
                    }
                    if k == 0 || d < bd {
                        best = k;
                        bd = d;
                    }
                }
                best
            };
            let tau = (0..n).map(|i| tp[nearest(&xt, ub[i], s[i])]).collect();
            let tau_ = (0..n).map(|i| tp_[nearest(&xt_, ub[i], s[i])]).collect();
            (tau, tau_)
        } else {
            let tau: Vec<f64> = ub
                .iter()
                .zip(s)
                .map(|(&u, &s)| np_clip(tau_inv(u, s, 0.0, 0.0, alpha, beta, gamma), 0.0, t_))
                .collect();
            let raw: Vec<f64> = ub
                .iter()
                .zip(s)
                .map(|(&u, &s)| tau_inv(u, s, u0_, s0_, 0.0, beta, gamma))
                .collect();
            let hi = nan_max(
                raw.iter()
                    .zip(s)
                    .filter(|&(_, &s)| s > 0.0)
                    .map(|(&t, _)| t),
            );
            let tau_ = raw.into_iter().map(|t| np_clip(t, 0.0, hi)).collect();
            (tau, tau_)
        }
    }

    /// The scaling-dependent vectors for `scaling` (computed once per scaling).
    fn scaled(&self, scaling: f64) -> std::cell::Ref<'_, Scaled> {
        let fresh =
            matches!(&*self.scaled.borrow(), Some(c) if c.scaling.to_bits() == scaling.to_bits());
        if !fresh {
            let ub: Vec<f64> = self.u.iter().map(|&u| u / scaling).collect();
            let (wub, wub2) = match self.graph {
                Some(g) => {
                    let sq: Vec<f64> = ub.iter().map(|x| x * x).collect();
                    let [a, b] = g.smooth([&ub, &sq]);
                    (a, b)
                }
                None => (Vec::new(), Vec::new()),
            };
            *self.scaled.borrow_mut() = Some(Scaled {
                scaling,
                ub,
                wub,
                wub2,
            });
        }
        std::cell::Ref::map(self.scaled.borrow(), |c| {
            c.as_ref().expect("set just above")
        })
    }

    /// scVelo's `compute_divergence` up to the state distances: branch times after gap
    /// closing, and (for `assign`) the assignment. Returns (τ, τ_, state distances).
    ///
    /// The kNN-smoothed distances are computed once, before the gap closing; the cells whose
    /// time the gap closing moves (about 15 % of them) then update the smoothed distances of
    /// the cells that have them as neighbours (through Wᵀ), and the distances to the two
    /// steady states come from the moments W·ub, W·ub², W·s, W·s² (W's rows sum to 1). The
    /// same sums as scVelo's, in another order: equal to rounding.
    #[allow(clippy::needless_range_loop)] // cells indexed across several vectors
    fn divergence(&self, p: &Pars) -> (Vec<f64>, Vec<f64>, Vec<[f64; 4]>) {
        let n = self.u.len();
        let sc = self.scaled(p.scaling);
        let ub = &sc.ub;
        let s = self.s;
        let (u0_, s0_) = solution(p.t_, 0.0, 0.0, p.alpha, p.beta, p.gamma);
        let (mut tau, mut tau_) = self.assign_tau(ub, p, u0_, s0_);
        let std_u = self.std_u / p.scaling;
        let std_s = self.std_s;
        // (repression, induction) distances of cell i at times (τ, τ_).
        let dist = |i: usize, tau: f64, tau_: f64| -> (f64, f64) {
            let (ut, st) = solution(tau, 0.0, 0.0, p.alpha, p.beta, p.gamma);
            let (ut_, st_) = solution(tau_, u0_, s0_, 0.0, p.beta, p.gamma);
            let (du, ds) = ((ub[i] - ut) / std_u, (s[i] - st) / std_s);
            let (du_, ds_) = ((ub[i] - ut_) / std_u, (s[i] - st_) / std_s);
            (du_ * du_ + ds_ * ds_, du * du + ds * ds)
        };
        // (off, on) per cell, interleaved: the updates below touch both at once.
        let d0: Vec<[f64; 2]> = (0..n)
            .map(|i| {
                let (o, a) = dist(i, tau[i], tau_[i]);
                [o, a]
            })
            .collect();
        // Gap closing: branches from the (smoothed) distances, then the increments.
        let mut d2 = match self.graph {
            Some(g) => g.smooth_packed(&d0),
            None => d0.clone(),
        };
        let is_on: Vec<bool> = d2.iter().map(|d| argmin(d) == 1).collect();
        let mut a: Vec<f64> = (0..n).filter(|&i| is_on[i]).map(|i| tau[i]).collect();
        let mut b: Vec<f64> = (0..n).filter(|&i| !is_on[i]).map(|i| tau_[i]).collect();
        let mut moved = Vec::new();
        if !a.is_empty() || !b.is_empty() {
            if !a.is_empty() && !b.is_empty() {
                adjust_increments(&mut a, &mut b);
            } else if !a.is_empty() {
                adjust_increments(&mut a, &mut []);
            } else {
                adjust_increments(&mut b, &mut []);
            }
            let (mut ia, mut ib) = (a.into_iter(), b.into_iter());
            for i in 0..n {
                let slot = if is_on[i] { &mut tau[i] } else { &mut tau_[i] };
                let new = if is_on[i] { ia.next() } else { ib.next() }.unwrap_or(*slot);
                if new.to_bits() != slot.to_bits() {
                    moved.push(i);
                }
                *slot = new;
            }
        }
        // State distances with the adjusted times: only the moved cells' change.
        for &j in &moved {
            let (o, n2) = dist(j, tau[j], tau_[j]);
            match self.graph {
                Some(g) => {
                    let (d_off, d_on) = (o - d0[j][0], n2 - d0[j][1]);
                    let (rows, vals) = g.wt().row(j);
                    for (&i, &x) in rows.iter().zip(vals) {
                        let d = &mut d2[i as usize];
                        d[0] += x * d_off;
                        d[1] += x * d_on;
                    }
                }
                None => d2[j] = [o, n2],
            }
        }
        let mut d: Vec<[f64; 4]> = Vec::with_capacity(n);
        if self.fit_steady_states {
            let (uinf, sinf) = (p.alpha / p.beta, p.alpha / p.gamma);
            let (vu, vs) = (std_u * std_u, std_s * std_s);
            for i in 0..n {
                let (zero, up) = if self.graph.is_some() {
                    let (mu, mu2, ms, ms2) = (sc.wub[i], sc.wub2[i], self.ws[i], self.ws2[i]);
                    (
                        mu2 / vu + ms2 / vs,
                        (mu2 - 2.0 * uinf * mu + uinf * uinf) / vu
                            + (ms2 - 2.0 * sinf * ms + sinf * sinf) / vs,
                    )
                } else {
                    let (a, b) = (ub[i] / std_u, s[i] / std_s);
                    let (c, e) = ((ub[i] - uinf) / std_u, (s[i] - sinf) / std_s);
                    (a * a + b * b, c * c + e * e)
                };
                d.push([d2[i][0], d2[i][1], zero, up]);
            }
        } else {
            for x in &d2 {
                d.push([x[0], x[1], f64::INFINITY, f64::INFINITY]);
            }
        }
        (tau, tau_, d)
    }

    /// The E-step (`assign_timepoints`) with parameters `p`, remembered: scVelo's schedule
    /// assigns the same parameters again and again (the first vertex of every simplex is the
    /// accepted point; a rejected candidate re-assigns the accepted parameters before trying
    /// a new switching time; the variance re-assigns the final ones). The assignment is a
    /// function of the parameters and the mode only, so a remembered one is the same to the
    /// bit.
    fn assign(&self, p: &Pars) -> Assignment {
        let key: MemoKey = (
            [p.alpha, p.beta, p.gamma, p.scaling, p.t_].map(f64::to_bits),
            self.mode,
        );
        let mut memo = self.memo.borrow_mut();
        if let Some(k) = memo.iter().position(|(k, _)| *k == key) {
            // Most recently used last: the oldest goes first, and the accepted assignment,
            // used again and again, stays.
            let e = memo.remove(k);
            let a = e.1.clone();
            memo.push(e);
            return a;
        }
        drop(memo);
        let a = self.assign_fresh(p);
        let mut memo = self.memo.borrow_mut();
        if memo.len() == MEMO_SIZE {
            memo.remove(0);
        }
        memo.push((key, a.clone()));
        a
    }

    /// [`Model::assign`] without the memory.
    fn assign_fresh(&self, p: &Pars) -> Assignment {
        let (mut tau, mut tau_, d) = self.divergence(p);
        let n = tau.len();
        let mut t = vec![0.0; n];
        let mut o = vec![0u8; n];
        for i in 0..n {
            let k = if self.fit_steady_states {
                argmin(&d[i])
            } else {
                argmin(&d[i][..2])
            };
            tau_[i] *= f64::from(u8::from(k == 0));
            tau[i] *= f64::from(u8::from(k == 1));
            let oi = match k {
                2 => 1,
                3 => 0,
                k => k as u8,
            };
            o[i] = oi;
            t[i] = if oi == 1 { tau[i] } else { tau_[i] + p.t_ };
        }
        Assignment { t, o }
    }

    /// Residuals on `cells` for times `t` (all cells) and parameters `p`: the summed
    /// (or mean) squared distance, with the steady-state-ratio regulariser when set.
    fn distx(&self, t: &[f64], p: &Pars, cells: Cells, regularize: bool) -> Vec<(f64, f64, f64)> {
        let idx = match cells {
            Cells::Weighted => &self.weighted,
            Cells::Upper => &self.upper,
        };
        let (u0_, s0_) = solution(p.t_, 0.0, 0.0, p.alpha, p.beta, p.gamma);
        let ratio = if regularize {
            self.steady_state_ratio
        } else {
            None
        };
        idx.iter()
            .map(|&i| {
                let ti = t[i];
                let (tau, u0, s0, a) = if ti < p.t_ {
                    (ti, 0.0, 0.0, p.alpha)
                } else {
                    (ti - p.t_, u0_, s0_, 0.0)
                };
                let (ut, st) = solution(tau, u0, s0, a, p.beta, p.gamma);
                let ud = (ut - self.u[i] / p.scaling) / self.std_u * p.scaling;
                let sd = (st - self.s[i]) / self.std_s;
                let reg = ratio.map_or(0.0, |r| (p.gamma / p.beta - r) * self.s[i] / self.std_s);
                (ud, sd, reg)
            })
            .collect()
    }

    fn se(&self, t: &[f64], p: &Pars) -> f64 {
        self.distx(t, p, Cells::Weighted, true)
            .iter()
            .map(|(u, s, r)| u * u + s * s + r * r)
            .sum()
    }

    /// `get_mse` of a candidate (the simplex objective): times re-assigned unless frozen.
    fn mse(&self, c: Change, refit_time: bool) -> f64 {
        let p = self.vars(c);
        let se = if refit_time {
            let a = self.assign(&p);
            self.se(&a.t, &p)
        } else {
            self.se(&self.asg.t, &p)
        };
        se / self.weighted.len() as f64
    }

    /// scVelo's `update`: accepts the candidate when the loss drops; with `adjust_t_`, tries
    /// moving the switching time to the last induction time.
    fn update(&mut self, c: Change, adjust_t_: bool) -> bool {
        let loss_prev = self.loss.last().copied().unwrap_or(1e6);
        let mut p = self.vars(c);
        let mut asg = self.assign(&p);
        let mut loss = self.se(&asg.t, &p);
        let mut perform = loss < loss_prev;
        let on: Vec<bool> = self.asg.o.iter().map(|&o| o == 1).collect();
        if adjust_t_ && on.iter().any(|&x| x) {
            if !perform {
                p = self.p;
                asg = self.assign(&p);
                loss = self.se(&asg.t, &p);
            }
            let mut alt_t_ = nan_max(asg.t.iter().zip(&on).filter(|&(_, &o)| o).map(|(&t, _)| t));
            if 0.0 < alt_t_ && alt_t_ < p.t_ {
                let n = asg.t.len() as f64;
                let tmax = nan_max(asg.t.iter().copied());
                let at_switch = asg.t.iter().filter(|&&t| t == p.t_).count() as f64;
                alt_t_ += tmax / n * at_switch;
                let alt_p = Pars { t_: alt_t_, ..p };
                let alt = self.assign(&alt_p);
                let alt_loss = self.se(&alt.t, &alt_p);
                let ut_cur = solution(p.t_, 0.0, 0.0, p.alpha, p.beta, p.gamma).0;
                let ut_alt = solution(alt_t_, 0.0, 0.0, p.alpha, p.beta, p.gamma).0;
                let min_loss = if loss.is_nan() || loss_prev.is_nan() {
                    f64::NAN
                } else {
                    loss.min(loss_prev)
                };
                if alt_loss * 0.99 <= min_loss || ut_cur * 0.99 < ut_alt {
                    asg = alt;
                    p.t_ = alt_t_;
                    loss = alt_loss;
                    perform = true;
                }
            }
        }
        if perform {
            self.steady_u *= self.p.scaling / p.scaling;
            self.p = p;
            self.asg = asg;
            self.loss.push(loss);
        }
        perform
    }

    fn simplex(
        &mut self,
        x0: &[f64],
        nm: NelderMead,
        to_change: fn(&[f64]) -> Change,
        refit_time: bool,
    ) {
        let x = nm.minimize(x0, |x| self.mse(to_change(x), refit_time));
        self.update(to_change(&x), true);
    }

    /// Log-likelihood and variance on the upper cells (scVelo's `get_loglikelihood`).
    fn loglikelihood(&self) -> f64 {
        let r = self.distx(&self.asg.t, &self.p, Cells::Upper, true);
        let d: Vec<f64> = r.iter().map(|(u, s, g)| u * u + s * s + g * g).collect();
        let n = (d.len() as f64 - self.u.len() as f64 * 0.01).max(2.0);
        let signed: Vec<f64> = r
            .iter()
            .zip(&d)
            .map(|((_, s, _), d)| sign(*s) * d.sqrt())
            .collect();
        let mut varx = mean(&d) - mean(&signed).powi(2);
        if varx == 0.0 {
            varx += 1.0;
        }
        -0.5 / n * d.iter().sum::<f64>() / varx - 0.5 * (2.0 * std::f64::consts::PI * varx).ln()
    }

    /// scVelo's `get_variance` (times re-assigned, no regulariser).
    fn variance(&self) -> f64 {
        let a = self.assign(&self.p);
        let r = self.distx(&a.t, &self.p, Cells::Upper, false);
        let d: Vec<f64> = r.iter().map(|(u, s, _)| u * u + s * s).collect();
        let signed: Vec<f64> = r
            .iter()
            .zip(&d)
            .map(|((_, s, _), d)| sign(*s) * d.sqrt())
            .collect();
        mean(&d) - mean(&signed).powi(2)
    }
}

/// NumPy's `sign` (0 at 0, NaN kept).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

/// Fits scVelo's dynamical model to one gene: `u`, `s` its first-order moments (`Mu`, `Ms`)
/// over all cells, `graph` the row-normalised binary kNN graph with self-loops (scVelo's
/// `get_connectivities`, prepared once for all genes by [`FitGraph::new`]; `None` disables
/// the smoothing of distances and times). `None` when the gene is not recoverable (at most 2
/// cells with u > 0 and s > 0), as scVelo skips it. The per-cell results are in the order
/// of `u` and `s`, whatever order the graph runs the fit in.
///
/// # Panics
/// When `u`, `s` and the graph differ in their number of cells.
pub fn fit_gene(
    u: &[f64],
    s: &[f64],
    graph: Option<&FitGraph>,
    opts: &DynamicsOptions,
) -> Option<GeneDynamics> {
    assert_eq!(s.len(), u.len(), "u and s must have one value per cell");
    let Some(g) = graph else {
        return fit_ordered(u, s, None, opts);
    };
    assert_eq!(g.n_cells(), u.len(), "the graph must have one row per cell");
    let (u, s) = (g.gather(u), g.gather(s));
    let mut fit = fit_ordered(&u, &s, Some(g), opts)?;
    fit.t = g.scatter(std::mem::take(&mut fit.t));
    fit.tau = g.scatter(std::mem::take(&mut fit.tau));
    fit.tau_ = g.scatter(std::mem::take(&mut fit.tau_));
    Some(fit)
}

/// [`fit_gene`] in the graph's cell order.
fn fit_ordered(
    u: &[f64],
    s: &[f64],
    graph: Option<&FitGraph>,
    opts: &DynamicsOptions,
) -> Option<GeneDynamics> {
    let n = u.len();
    // Weights: expressed in both, below the upper percentile of the expressed cells.
    let mut weights: Vec<bool> = (0..n).map(|i| s[i] > 0.0 && u[i] > 0.0).collect();
    if weights.iter().filter(|&&x| x).count() <= 2 {
        return None;
    }
    let sel = |v: &[f64], m: &[bool]| -> Vec<f64> {
        v.iter()
            .zip(m)
            .filter(|&(_, &k)| k)
            .map(|(&x, _)| x)
            .collect()
    };
    let ub_s = percentile(&sel(s, &weights), opts.perc);
    let ub_u = percentile(&sel(u, &weights), opts.perc);
    for i in 0..n {
        if ub_s > 0.0 && s[i] > ub_s {
            weights[i] = false;
        }
        if ub_u > 0.0 && u[i] > ub_u {
            weights[i] = false;
        }
    }
    let (u_w, s_w) = (sel(u, &weights), sel(s, &weights));
    let max_u = nan_max(u_w.iter().copied());
    let max_s = nan_max(s_w.iter().copied());
    let upper: Vec<usize> = (0..n)
        .filter(|&i| weights[i] && u[i] > max_u / 3.0 && s[i] > max_s / 3.0)
        .collect();
    let weighted: Vec<usize> = (0..n).filter(|&i| weights[i]).collect();
    let (mut std_u, mut std_s) = (std(&u_w), std(&s_w));
    if std_u == 0.0 || std_s == 0.0 {
        std_u = 1.0;
        std_s = 1.0;
    }
    let scaling = if opts.fit_scaling { std_u / std_s } else { 1.0 };
    let uw: Vec<f64> = u_w.iter().map(|x| x / scaling).collect();
    // γ from the extreme quantiles of s; β = 1.
    let (ps, pu) = (percentile(&s_w, 98.0), percentile(&uw, 98.0));
    let ws: Vec<bool> = s_w.iter().map(|&x| x >= ps).collect();
    let wu: Vec<bool> = uw.iter().map(|&x| x >= pu).collect();
    let (mut us, mut ss) = (0.0, 0.0);
    for i in 0..uw.len() {
        let (a, b) = if ws[i] { (uw[i], s_w[i]) } else { (0.0, 0.0) };
        us += b * a;
        ss += b * b;
    }
    let mut beta = 1.0;
    let mut gamma = us / ss + 1e-6;
    if gamma < 0.05 / scaling {
        gamma *= 1.2;
    } else if gamma > 1.5 / scaling {
        gamma /= 1.2;
    }
    let mut u_inf = mean(&sel(
        &uw,
        &wu.iter()
            .zip(&ws)
            .map(|(a, b)| *a || *b)
            .collect::<Vec<_>>(),
    ));
    let s_inf = mean(&sel(&s_w, &ws));
    let (mut u0_, s0_) = (u_inf, s_inf);
    let mut alpha = u_inf * beta;
    let (pval_u, means_u) = test_bimodality(&uw).unwrap_or((1.0, [0.0, 0.0]));
    let (pval_s, means_s) = test_bimodality(&s_w).unwrap_or((1.0, [0.0, 0.0]));
    let pval_steady = if pval_u.is_nan() || pval_s.is_nan() {
        f64::NAN
    } else {
        pval_u.max(pval_s)
    };
    let (steady_u, steady_s) = (means_u[1], means_s[1]);
    if pval_steady < 1e-3 {
        u_inf = (u_inf + steady_u) / 2.0;
        alpha = gamma * s_inf;
        beta = alpha / u_inf;
        u0_ = u_inf;
    }
    let t_ = tau_inv(u0_, s0_, 0.0, 0.0, alpha, beta, gamma);
    let [ws, ws2] = match graph {
        Some(g) => g.smooth([s, &s.iter().map(|x| x * x).collect::<Vec<f64>>()]),
        None => [Vec::new(), Vec::new()],
    };
    let mut m = Model {
        u,
        s,
        graph,
        weighted,
        upper,
        std_u,
        std_s,
        p: Pars {
            alpha,
            beta,
            gamma,
            scaling,
            t_,
        },
        asg: Assignment {
            t: Vec::new(),
            o: Vec::new(),
        },
        loss: Vec::new(),
        steady_state_ratio: None,
        mode: None,
        fit_steady_states: opts.fit_steady_states,
        ws,
        ws2,
        scaled: std::cell::RefCell::new(None),
        memo: std::cell::RefCell::new(Vec::with_capacity(MEMO_SIZE)),
        steady_u,
        steady_s,
    };
    m.asg = m.assign(&m.p);
    let first = m.se(&m.asg.t, &m.p);
    m.loss.push(first);
    if opts.fit_scaling {
        for sight in [0.5, 0.1] {
            let sc = m.p.scaling;
            for z in linspace(-1.0, 1.0, 4) {
                let z = sc + z * sc * sight;
                let beta = m.p.beta / m.p.scaling * z;
                m.update(
                    Change {
                        scaling: Some(z),
                        beta: Some(beta),
                        ..Change::default()
                    },
                    true,
                );
            }
        }
    }
    m.steady_state_ratio = Some(m.p.gamma / m.p.beta);

    let iters = opts.max_iter / 5;
    if opts.max_iter > 0 {
        let nm = NelderMead::new(iters);
        if opts.assignment_mode == AssignmentMode::FullProjection {
            m.mode = Some(AssignmentMode::FullProjection);
        }
        // fit_t_and_alpha: five α tries, then the simplex over (t_, α).
        let a0 = m.p.alpha;
        for k in linspace(-1.0, 1.0, 5) {
            m.update(
                Change {
                    alpha: Some(a0 + k * a0 / 10.0),
                    ..Change::default()
                },
                true,
            );
        }
        let x0 = [m.p.t_, m.p.alpha];
        m.simplex(
            &x0,
            nm,
            |x| Change {
                t_: Some(x[0]),
                alpha: Some(x[1]),
                ..Change::default()
            },
            true,
        );
        if opts.fit_scaling {
            let x0 = [m.p.t_, m.p.beta, m.p.scaling];
            m.simplex(
                &x0,
                nm,
                |x| Change {
                    t_: Some(x[0]),
                    beta: Some(x[1]),
                    scaling: Some(x[2]),
                    ..Change::default()
                },
                true,
            );
        }
        let x0 = [m.p.alpha, m.p.gamma];
        m.simplex(
            &x0,
            nm.with_tol(1e-2),
            |x| Change {
                alpha: Some(x[0]),
                gamma: Some(x[1]),
                ..Change::default()
            },
            true,
        );
        let x0 = [m.p.t_];
        m.simplex(
            &x0,
            nm,
            |x| Change {
                t_: Some(x[0]),
                ..Change::default()
            },
            true,
        );
        let all = |x: &[f64]| Change {
            t_: Some(x[0]),
            alpha: Some(x[1]),
            beta: Some(x[2]),
            gamma: Some(x[3]),
            scaling: None,
        };
        let x0 = [m.p.t_, m.p.alpha, m.p.beta, m.p.gamma];
        m.simplex(&x0, nm.with_tol(1e-2), all, true);
        // The projection from here on (scVelo's mode switch), then the rates with times frozen.
        m.mode = Some(opts.assignment_mode);
        m.update(Change::default(), false);
        let x0 = [m.p.t_, m.p.alpha, m.p.beta, m.p.gamma];
        m.simplex(&x0, nm.with_tol(1e-2), all, false);
    }
    m.update(Change::default(), true);
    let (tau, tau_, _) = m.divergence(&m.p);
    let likelihood = m.loglikelihood().exp();
    let variance = m.variance();
    let p = m.p;
    let mut t = match graph {
        Some(g) => {
            let [t] = g.smooth([&m.asg.t]);
            t
        }
        None => m.asg.t.clone(),
    };
    let mut out = GeneDynamics {
        alpha: p.alpha,
        beta: p.beta / p.scaling,
        gamma: p.gamma,
        t_: p.t_,
        scaling: p.scaling,
        std_u,
        std_s,
        likelihood,
        u0: 0.0,
        s0: 0.0,
        pval_steady,
        steady_u: m.steady_u * p.scaling,
        steady_s: m.steady_s,
        variance,
        alignment_scaling: f64::NAN,
        t: Vec::new(),
        tau,
        tau_,
        loss: m.loss,
    };
    if let Some(t_max) = opts.t_max {
        let tm = align_factor(&t, out.t_, t_max);
        out.alpha /= tm;
        out.beta /= tm;
        out.gamma /= tm;
        out.t_ *= tm;
        for v in t
            .iter_mut()
            .chain(out.tau.iter_mut())
            .chain(out.tau_.iter_mut())
        {
            *v *= tm;
        }
        out.alignment_scaling = if tm == 1.0 { f64::NAN } else { tm };
    }
    out.t = t;
    Some(out)
}

/// scVelo's `velocity(mode="dynamical")` for one fitted gene: each cell's state is the most
/// likely of induction, repression, the two steady states and "none" (kNN-smoothed state
/// distances scaled by the variance of the signed branch distance), its time is smoothed over
/// the kNN graph and re-split at t_, and the velocities are read off the curve at that time:
/// spliced v = βu(t) − γs(t) (at least −s), unspliced w = (α·1{induction} − βu(t))·scaling
/// (at least −u); steady and "none" cells get 0. Returns (spliced, unspliced) velocities.
///
/// # Panics
/// When `u`, `s`, the fit's times and the graph differ in their number of cells.
pub fn dynamical_velocity(
    u: &[f64],
    s: &[f64],
    fit: &GeneDynamics,
    graph: Option<&FitGraph>,
) -> (Vec<f64>, Vec<f64>) {
    let n = u.len();
    assert!(
        s.len() == n && fit.tau.len() == n && fit.tau_.len() == n,
        "u, s and the fit's times must have one value per cell"
    );
    let Some(g) = graph else {
        return velocity_ordered(u, s, &fit.tau, &fit.tau_, fit, None);
    };
    assert_eq!(g.n_cells(), n, "the graph must have one row per cell");
    let (vs, vu) = velocity_ordered(
        &g.gather(u),
        &g.gather(s),
        &g.gather(&fit.tau),
        &g.gather(&fit.tau_),
        fit,
        Some(g),
    );
    (g.scatter(vs), g.scatter(vu))
}

/// [`dynamical_velocity`] in the graph's cell order (`tau`, `tau_` the fit's times in it).
fn velocity_ordered(
    u: &[f64],
    s: &[f64],
    tau: &[f64],
    tau_: &[f64],
    fit: &GeneDynamics,
    graph: Option<&FitGraph>,
) -> (Vec<f64>, Vec<f64>) {
    let n = u.len();
    let sc = fit.scaling;
    let (alpha, beta, gamma, t_) = (fit.alpha, fit.beta * sc, fit.gamma, fit.t_);
    let ub: Vec<f64> = u.iter().map(|&x| x / sc).collect();
    let std_u = fit.std_u / sc;
    let std_s = fit.std_s;
    let (u0_, s0_) = solution(t_, 0.0, 0.0, alpha, beta, gamma);
    let mut on = vec![0.0; n];
    let mut off = vec![0.0; n];
    let mut zero = vec![0.0; n];
    let mut up = vec![0.0; n];
    let mut signed_on = vec![0.0; n];
    let mut signed_off = vec![0.0; n];
    let (uinf, sinf) = (alpha / beta, alpha / gamma);
    for i in 0..n {
        let (ut, st) = solution(tau[i], 0.0, 0.0, alpha, beta, gamma);
        let (ut_, st_) = solution(tau_[i], u0_, s0_, 0.0, beta, gamma);
        let (du, ds) = ((ub[i] - ut) / std_u, (s[i] - st) / std_s);
        let (du_, ds_) = ((ub[i] - ut_) / std_u, (s[i] - st_) / std_s);
        on[i] = du * du + ds * ds;
        off[i] = du_ * du_ + ds_ * ds_;
        signed_on[i] = ds;
        signed_off[i] = ds_;
        let (a, b) = ((ub[i] - uinf) / std_u, (s[i] - sinf) / std_s);
        up[i] = a * a + b * b;
        let (a, b) = (ub[i] / std_u, s[i] / std_s);
        zero[i] = a * a + b * b;
    }
    // The variance of the signed distance on the nearer branch (unsmoothed).
    let mut dist = vec![0.0; n];
    let mut sgn = vec![0.0; n];
    for i in 0..n {
        let o = argmin(&[off[i], on[i]]) == 1;
        dist[i] = if o { on[i] } else { off[i] };
        sgn[i] = sign(if o { signed_on[i] } else { signed_off[i] }) * dist[i].sqrt();
    }
    let varx = mean(&dist) - mean(&sgn).powi(2);
    let d = match graph {
        Some(g) => g.smooth([&off, &on, &zero, &up]),
        None => [off, on, zero, up],
    };
    let norm = 1.0 / (2.0 * std::f64::consts::PI * varx.sqrt());
    let mut state = vec![0usize; n];
    let mut t = vec![0.0; n];
    for i in 0..n {
        let mut p = [0.0; 5];
        for k in 0..4 {
            p[k] = norm * (-0.5 * (d[k][i] / varx)).exp();
        }
        p[4] = 1e-6;
        // normalize(min_confidence=1e-2) does not change the argmax.
        let k = crate::stats::argmax(&p);
        state[i] = k;
        t[i] = match k {
            1 => tau[i],
            0 => tau_[i] + t_,
            _ => 0.0,
        };
    }
    let t = match graph {
        Some(g) => {
            let [t] = g.smooth([&t]);
            t
        }
        None => t,
    };
    let mut vs = vec![0.0; n];
    let mut vu = vec![0.0; n];
    for i in 0..n {
        let moving = state[i] < 2;
        if !moving {
            continue;
        }
        let induction = t[i] < t_;
        let (tau, u0, s0, a) = if induction {
            (t[i], 0.0, 0.0, alpha)
        } else {
            (t[i] - t_, u0_, s0_, 0.0)
        };
        let (ut, st) = solution(tau, u0, s0, a, beta, gamma);
        let a = if induction { a } else { 0.0 };
        vs[i] = (ut * beta - st * gamma).max(-s[i]);
        vu[i] = ((a - beta * ut) * sc).max(-ub[i] * sc);
    }
    (vs, vu)
}

/// scVelo's `align_dynamics` factor m = t_max / T_max for one gene's smoothed times: T_max
/// the longest induction time plus the longest repression time, divided by the share of
/// cells not exactly at 0 or t_.
fn align_factor(t: &[f64], t_: f64, t_max: f64) -> f64 {
    let on = nan_max(t.iter().map(|&x| if x < t_ { x } else { 0.0 }));
    let off = nan_max(t.iter().map(|&x| if x > t_ { x - t_ } else { 0.0 }));
    let mut tmax = on + off;
    let ties = t.iter().filter(|&&x| x == t_ || x == 0.0).count() as f64;
    let mut denom = 1.0 - ties / t.len() as f64;
    if denom == 0.0 {
        denom += 1.0;
    }
    tmax /= denom;
    if tmax == 0.0 {
        tmax += 1.0;
    }
    t_max / tmax
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellfate_kernels::Csr;

    /// The phase curve starts at the origin, reaches the switch point after n points, follows
    /// du/dt = α − βu there (on induction u → α/β), and ends with u at 1 % of its switch value.
    #[test]
    fn phase_curve_follows_the_solution() {
        let (alpha, beta, gamma, t_, scaling) = (2.0, 0.5, 0.4, 3.0, 2.0);
        let c = phase_curve(alpha, beta, gamma, t_, scaling, 50);
        assert_eq!(c.len(), 100);
        assert_eq!(c[0], (0.0, 0.0));
        let b = beta * scaling;
        let (u_sw, s_sw) = solution(t_, 0.0, 0.0, alpha, b, gamma);
        assert!((c[49].1 - u_sw * scaling).abs() < 1e-12 && (c[49].0 - s_sw).abs() < 1e-12);
        // Analytic induction: u(t) = α/b (1 − e^{−b t}).
        let expected = alpha / b * (1.0 - (-b * t_).exp()) * scaling;
        assert!((c[49].1 - expected).abs() < 1e-12);
        assert!((c[99].1 - 0.01 * u_sw * scaling).abs() < 1e-9);
        assert!(phase_curve(f64::NAN, beta, gamma, t_, scaling, 50).is_empty());
        assert!(phase_curve(alpha, beta, gamma, 0.0, scaling, 50).is_empty());
    }

    /// Cells on a known trajectory (α = 2, β = 1, γ = 0.5, t_ = 4, times uniform on [0, 8]):
    /// the fit reproduces γ/β and orders cells by time.
    #[test]
    fn recovers_a_noise_free_trajectory() {
        let (alpha, beta, gamma, t_sw) = (2.0, 1.0, 0.5, 4.0);
        let n = 400;
        let (u0_, s0_) = solution(t_sw, 0.0, 0.0, alpha, beta, gamma);
        let mut u = Vec::new();
        let mut s = Vec::new();
        let mut truth = Vec::new();
        for i in 0..n {
            let t = 8.0 * (i as f64 + 0.5) / n as f64;
            let (a, b) = if t < t_sw {
                solution(t, 0.0, 0.0, alpha, beta, gamma)
            } else {
                solution(t - t_sw, u0_, s0_, 0.0, beta, gamma)
            };
            // A little deterministic noise keeps the percentiles apart.
            let e = 1.0 + 0.01 * ((i * 7919 % 13) as f64 - 6.0) / 6.0;
            u.push(a * e);
            s.push(b / e);
            truth.push(t);
        }
        let fit = fit_gene(&u, &s, None, &DynamicsOptions::default()).expect("recoverable");
        // γ/β of the observed u (fit_beta is β / scaling). scVelo's schedule (two simplex
        // iterations per step) is coarse without the kNN smoothing: within 20 % here.
        let ratio = fit.gamma / fit.beta;
        assert!((ratio - 0.5).abs() / 0.5 < 0.2, "γ/β = {ratio}");
        // Spearman-like check: times increase with the true time for most pairs.
        let mut concordant = 0;
        let mut total = 0;
        for i in (0..n).step_by(7) {
            for j in (0..n).step_by(11) {
                if truth[i] < truth[j] {
                    total += 1;
                    if fit.t[i] < fit.t[j] {
                        concordant += 1;
                    }
                }
            }
        }
        assert!(
            concordant as f64 / total as f64 > 0.9,
            "{concordant}/{total}"
        );
        assert!(fit.likelihood.is_finite() && fit.likelihood > 0.0);
    }

    #[test]
    fn a_reordered_graph_gives_the_same_fit_in_the_input_order() {
        // One switching trajectory stored in a scrambled cell order, smoothed over a graph
        // of each cell's 10 nearest cells in true time (W row-normalised, self-loops).
        let (alpha, beta, gamma, t_sw) = (2.0, 1.0, 0.5, 4.0);
        let n = 600;
        let (u0_, s0_) = solution(t_sw, 0.0, 0.0, alpha, beta, gamma);
        let pos: Vec<usize> = (0..n).map(|i| (i * 389 + 17) % n).collect(); // 389 ⊥ 600
        let mut cell_at = vec![0usize; n];
        let (mut u, mut s) = (vec![0.0; n], vec![0.0; n]);
        for (i, &p) in pos.iter().enumerate() {
            cell_at[p] = i;
            let t = 8.0 * (p as f64 + 0.5) / n as f64;
            let (a, b) = if t < t_sw {
                solution(t, 0.0, 0.0, alpha, beta, gamma)
            } else {
                solution(t - t_sw, u0_, s0_, 0.0, beta, gamma)
            };
            let e = 1.0 + 0.05 * ((i * 7919 % 13) as f64 - 6.0) / 6.0;
            (u[i], s[i]) = (a * e, b / e);
        }
        let mut trip = Vec::new();
        for (i, &p) in pos.iter().enumerate() {
            let (lo, hi) = (p.saturating_sub(5), (p + 5).min(n - 1));
            for &j in &cell_at[lo..=hi] {
                trip.push((i, j, 1.0 / (hi - lo + 1) as f64));
            }
        }
        let w = Csr::from_triplets(n, n, &trip).expect("graph");
        let opts = DynamicsOptions::default();
        let (plain, reordered) = (
            FitGraph::with_order(&w, false),
            FitGraph::with_order(&w, true),
        );
        let a = fit_gene(&u, &s, Some(&plain), &opts).expect("recoverable");
        let b = fit_gene(&u, &s, Some(&reordered), &opts).expect("recoverable");
        // The same sums in another order: equal to rounding, which the simplex may amplify
        // a little. Tolerance 1e-6 relative on the parameters, 1e-6 of the largest time.
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-6 * x.abs().max(y.abs());
        for (what, x, y) in [
            ("alpha", a.alpha, b.alpha),
            ("beta", a.beta, b.beta),
            ("gamma", a.gamma, b.gamma),
            ("t_", a.t_, b.t_),
            ("scaling", a.scaling, b.scaling),
            ("likelihood", a.likelihood, b.likelihood),
        ] {
            assert!(close(x, y), "{what}: {x} vs {y}");
        }
        let tmax = a.t.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (x, y) in [(&a.t, &b.t), (&a.tau, &b.tau), (&a.tau_, &b.tau_)] {
            for (i, (p, q)) in x.iter().zip(y.iter()).enumerate() {
                assert!((p - q).abs() <= 1e-6 * tmax, "cell {i}: {p} vs {q}");
            }
        }
        let (va, vb) = (
            dynamical_velocity(&u, &s, &a, Some(&plain)),
            dynamical_velocity(&u, &s, &b, Some(&reordered)),
        );
        let vmax = va.0.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(vmax > 0.0, "some cells move");
        for (x, y) in [(&va.0, &vb.0), (&va.1, &vb.1)] {
            for (i, (p, q)) in x.iter().zip(y.iter()).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-6 * vmax,
                    "velocity of cell {i}: {p} vs {q}"
                );
            }
        }
    }

    #[test]
    fn too_few_expressed_cells_are_not_recoverable() {
        let u = [0.0, 1.0, 0.0, 2.0];
        let s = [1.0, 0.0, 0.0, 2.0];
        assert!(fit_gene(&u, &s, None, &DynamicsOptions::default()).is_none());
    }

    #[test]
    fn integer_keys_sort_as_total_cmp() {
        let mut v = vec![
            3.0,
            -0.0,
            0.0,
            f64::NAN,
            -f64::NAN,
            -1e-300,
            f64::INFINITY,
            -2.5,
            1e-310,
            f64::NEG_INFINITY,
            2.0,
            -2.5,
        ];
        let mut want = v.clone();
        want.sort_by(f64::total_cmp);
        sort_total(&mut v);
        let bits = |x: &[f64]| x.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&v), bits(&want));
    }

    #[test]
    fn increments_above_the_bound_are_closed() {
        // Increments of 0.01 (bound 3 × 0.01) and one jump of 90.01 to 100.
        let mut a: Vec<f64> = (0..1000).map(|i| i as f64 * 0.01).collect();
        a.push(100.0);
        let mut b: Vec<f64> = Vec::new();
        adjust_increments(&mut a, &mut b);
        // The jump is removed entirely: the last time equals the one before it.
        assert!((a[1000] - 9.99).abs() < 1e-9, "{}", a[1000]);
        assert_eq!(a[500], 5.0);
    }
}
