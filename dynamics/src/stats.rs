//! The few statistics the dynamical model needs, computed as NumPy/SciPy compute them:
//! percentiles with linear interpolation, `linspace`, population standard deviations, a
//! Gaussian KDE with Scott's bandwidth and scVelo's bimodality test.

/// `np.percentile(values, q)` (linear interpolation, NumPy's lerp). NaN when empty or when
/// a value is NaN (NumPy propagates it).
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_unstable_by(|a, b| a.total_cmp(b));
    percentile_sorted(&v, q)
}

/// [`percentile`] by selection (reorders `values`; linear time): the same value as sorting.
pub fn percentile_select(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let pos = q / 100.0 * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(values.len() - 1);
    let (_, &mut a, rest) = values.select_nth_unstable_by(lo, |x, y| x.total_cmp(y));
    let b = if hi == lo {
        a
    } else {
        rest.iter().copied().fold(f64::INFINITY, f64::min)
    };
    lerp(a, b, pos - lo as f64)
}

/// [`percentile`] of values already sorted ascending (no NaN).
pub fn percentile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let t = pos - lo as f64;
    lerp(v[lo], v[hi], t)
}

/// NumPy's `_lerp`: a + (b − a)·t, computed from b when t ≥ ½.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// `np.linspace(start, stop, num)`: `start + i·step`, the last point exactly `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// Mean (NaN when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Population standard deviation (`np.std`, ddof 0).
pub fn std(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
}

/// The normal survival function 1 − Φ(t) (`scipy.stats.norm.sf`).
pub fn norm_sf(t: f64) -> f64 {
    0.5 * libm::erfc(t / std::f64::consts::SQRT_2)
}

/// `scipy.stats.gaussian_kde(x)(grid)` in one dimension: Scott's factor n^(−1/5) times the
/// sample standard deviation (ddof 1). `None` when the variance is zero or undefined (SciPy
/// raises a `LinAlgError` there).
pub fn gaussian_kde(x: &[f64], grid: &[f64]) -> Option<Vec<f64>> {
    let n = x.len();
    if n < 2 {
        return None;
    }
    let m = mean(x);
    let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64;
    let factor = (n as f64).powf(-0.2);
    let cov = var * factor * factor;
    if cov.is_nan() || cov <= 0.0 || !cov.is_finite() {
        return None;
    }
    let norm = 1.0 / ((2.0 * std::f64::consts::PI * cov).sqrt() * n as f64);
    Some(
        grid.iter()
            .map(|g| {
                x.iter()
                    .map(|xi| (-(g - xi) * (g - xi) / (2.0 * cov)).exp())
                    .sum::<f64>()
                    * norm
            })
            .collect(),
    )
}

/// scVelo's `test_bimodality(x, bins=30, kde=True)`: a KDE on 30 points from the minimum to
/// the maximum, split at the lowest point among grid points 13–16; returns the p-value of
/// the upper peak standing out of the upper part and the two peak positions (the midpoint
/// of each peak's grid cell). `None` where SciPy's KDE fails (constant data).
pub fn test_bimodality(x: &[f64]) -> Option<(f64, [f64; 2])> {
    const BINS: usize = 30;
    let lb = x.iter().copied().fold(f64::INFINITY, f64::min);
    let ub = percentile(x, 99.9);
    let hi = if ub <= lb {
        ub
    } else {
        x.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    };
    let grid = linspace(lb, hi, BINS);
    let kde = gaussian_kde(x, &grid)?;
    let mut idx = BINS / 2 - 2;
    idx += argmin(&kde[idx..idx + 4]);
    let peak_0 = argmax(&kde[..idx]);
    let peak_1 = argmax(&kde[idx..]);
    let kde_peak = kde[idx + peak_1];
    let kde_mid = mean(&kde[idx..]);
    let t = (kde_peak - kde_mid) / (std(&kde) / (BINS as f64).sqrt()).max(1.0);
    let p = norm_sf(t);
    let (g0, g1) = (&grid[..idx], &grid[idx..]);
    let means = [
        (g0[peak_0] + g0[(peak_0 + 1).min(g0.len() - 1)]) / 2.0,
        (g1[peak_1] + g1[(peak_1 + 1).min(g1.len() - 1)]) / 2.0,
    ];
    Some((p, means))
}

/// First index of the smallest value (NumPy's `argmin`: a NaN wins).
pub fn argmin(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x.is_nan() {
            return i;
        }
        if x < v[best] {
            best = i;
        }
    }
    best
}

/// First index of the largest value (NumPy's `argmax`: a NaN wins).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x.is_nan() {
            return i;
        }
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy() {
        // np.percentile([1, 2, 3, 4, 10], [0, 25, 50, 99, 99.5, 100])
        let v = [4.0, 1.0, 10.0, 3.0, 2.0];
        for (q, want) in [
            (0.0, 1.0),
            (25.0, 2.0),
            (50.0, 3.0),
            (99.0, 9.76),
            (99.5, 9.88),
            (100.0, 10.0),
        ] {
            assert!((percentile(&v, q) - want).abs() < 1e-12, "{q}");
        }
        assert!(percentile(&[], 50.0).is_nan());
        for q in [0.0, 25.0, 50.0, 99.0, 99.5, 100.0] {
            assert_eq!(
                percentile_select(&mut v.clone(), q),
                percentile(&v, q),
                "{q}"
            );
        }
    }

    #[test]
    fn linspace_ends_exactly() {
        let v = linspace(0.0, 0.3, 4);
        assert_eq!(v[3], 0.3);
        assert!((v[1] - 0.1).abs() < 1e-16);
    }

    #[test]
    fn kde_integrates_to_one_and_norm_sf_is_symmetric() {
        let x: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64 / 10.0).collect();
        let grid = linspace(-10.0, 20.0, 3001);
        let k = gaussian_kde(&x, &grid).expect("kde");
        let integral: f64 = k.iter().sum::<f64>() * 0.01;
        assert!((integral - 1.0).abs() < 1e-3, "{integral}");
        assert!((norm_sf(0.0) - 0.5).abs() < 1e-16);
        assert!((norm_sf(1.0) + norm_sf(-1.0) - 1.0).abs() < 1e-15);
        assert!((norm_sf(3.0) - 0.0013498980316301).abs() < 1e-15);
        assert!(gaussian_kde(&[1.0, 1.0, 1.0], &grid).is_none());
    }

    #[test]
    fn bimodality_separates_two_clusters() {
        // 300 values near 1 and 100 near 9: a significant upper peak near 9.
        let mut x: Vec<f64> = (0..300).map(|i| 1.0 + (i % 7) as f64 * 0.05).collect();
        x.extend((0..100).map(|i| 9.0 + (i % 5) as f64 * 0.05));
        let (p, means) = test_bimodality(&x).expect("test");
        assert!(means[1] > 8.5 && means[0] < 2.0, "{means:?}");
        assert!((0.0..=1.0).contains(&p));
    }
}
