//! Value parsers of the numeric flags: a value out of range is refused by the argument parser,
//! whose error names the flag (`invalid value 'NaN' for '--stability-threshold <...>'`) and
//! says what is allowed. NaN and infinities are never accepted.

use cellfate::pipeline::NStates;

fn parse_f64(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number, got {s:?}"))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("expected a finite number, got {s}"))
    }
}

fn parse_count(s: &str, min: usize) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number >= {min}, got {s:?}"))?;
    if n < min {
        return Err(format!("expected a whole number >= {min}, got {n}"));
    }
    Ok(n)
}

/// A whole number ≥ 0.
pub(crate) fn non_negative(s: &str) -> Result<usize, String> {
    parse_count(s, 0)
}

/// A whole number ≥ 1.
pub(crate) fn positive(s: &str) -> Result<usize, String> {
    parse_count(s, 1)
}

/// A whole number ≥ 2.
pub(crate) fn at_least_two(s: &str) -> Result<usize, String> {
    parse_count(s, 2)
}

/// A finite number > 0.
pub(crate) fn positive_f64(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x > 0.0 {
        Ok(x)
    } else {
        Err(format!("expected a positive number, got {x}"))
    }
}

/// A finite number ≥ 0.
pub(crate) fn non_negative_f64(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x >= 0.0 {
        Ok(x)
    } else {
        Err(format!("expected a non-negative number, got {x}"))
    }
}

/// A probability threshold in (0, 1].
pub(crate) fn threshold(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err(format!("expected a number in (0, 1], got {x}"))
    }
}

/// A percentile in (0, 100].
pub(crate) fn percentile(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x > 0.0 && x <= 100.0 {
        Ok(x)
    } else {
        Err(format!("expected a percentile in (0, 100], got {x}"))
    }
}

/// A compression setting: none, gzip or gzip:LEVEL.
pub(crate) fn compression(s: &str) -> Result<cellfate::io::Compression, String> {
    s.parse()
        .map_err(|e: cellfate::io::compression::CompressionParseError| e.to_string())
}

/// A number of macrostates: N ≥ 2, MIN..MAX (MIN ≤ MAX, MAX ≥ 2), auto or eigengap.
pub(crate) fn n_states(s: &str) -> Result<NStates, String> {
    let n = s.parse::<NStates>().map_err(|e| e.to_string())?;
    match n {
        NStates::Fixed(m) if m < 2 => Err(format!(
            "expected at least 2 macrostates (GPCCA needs 2), got {m}"
        )),
        NStates::Range(lo, hi) if lo > hi || hi < 2 => Err(format!(
            "expected MIN..MAX with MIN <= MAX and MAX >= 2, got {lo}..{hi}"
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nan_inf_zero_and_negatives() {
        for bad in ["NaN", "nan", "inf", "-inf", "0", "-1", "1.5", "x"] {
            assert!(threshold(bad).is_err(), "{bad}");
        }
        assert_eq!(threshold("1").ok(), Some(1.0));
        assert!(positive_f64("0").is_err() && positive_f64("NaN").is_err());
        assert!(non_negative_f64("-0.5").is_err() && non_negative_f64("0").is_ok());
        assert!(positive("0").is_err() && positive("-3").is_err() && positive("2").is_ok());
        assert!(at_least_two("1").is_err() && at_least_two("2").is_ok());
        assert!(percentile("0").is_err() && percentile("101").is_err() && percentile("98").is_ok());
        assert!(n_states("1").is_err() && n_states("5..3").is_err() && n_states("3..5").is_ok());
        assert!(n_states("auto").is_ok() && n_states("eigengap").is_ok());
    }
}
