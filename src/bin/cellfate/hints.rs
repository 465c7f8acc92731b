//! Hints after an error, in the flags of the command that failed. The library's errors name
//! parameters in library terms (`TerminalMethod::TopN { n_states }`, `n_cells`,
//! `upstream.root_cluster`); the same advice needs different flags on `run` (`--terminal-method
//! top_n --n-terminal 2`) and on `terminal-states` (`--method top_n --n-states 2`), and none at
//! all on a command that cannot act on it (then the hint names the command that can). Every
//! flag a hint names exists on the command it names (a test checks it against `--help`).

use std::error::Error;

use cellfate::estimator_io::EstimatorIoError;
use cellfate::estimators::absorption::AbsorptionError;
use cellfate::estimators::states::StatesError;
use cellfate::estimators::EstimatorError;
use cellfate::pipeline::PipelineError;

/// The errors a hint exists for.
enum Known {
    /// The stability rule selected no macrostate; the highest stability.
    NoneStable { max: f64 },
    /// Absorption failed on a chain with `unit` (nearly) closed sets.
    ClosedSets { unit: usize },
    /// Transient cells that reach no terminal state.
    Unreachable,
    /// The diffusion pseudotime needs a root.
    MissingRoot,
    /// The top_n rule asked for more terminal states than there are macrostates.
    TopNTooMany { n_states: usize, macrostates: usize },
}

fn from_states(e: &StatesError) -> Option<Known> {
    match e {
        StatesError::NoneStable { max, .. } => Some(Known::NoneStable { max: *max }),
        StatesError::TopNTooMany {
            n_states,
            macrostates,
        } => Some(Known::TopNTooMany {
            n_states: *n_states,
            macrostates: *macrostates,
        }),
        _ => None,
    }
}

fn from_absorption(e: &AbsorptionError) -> Option<Known> {
    match e {
        AbsorptionError::Unreachable { .. } => Some(Known::Unreachable),
        _ => None,
    }
}

fn from_estimator(e: &EstimatorError) -> Option<Known> {
    match e {
        EstimatorError::StateSelection(s) => from_states(s),
        EstimatorError::Absorption(a) => from_absorption(a),
        EstimatorError::ClosedSets { unit, .. } => Some(Known::ClosedSets { unit: *unit }),
        _ => None,
    }
}

fn from_pipeline(e: &PipelineError) -> Option<Known> {
    match e {
        PipelineError::Estimator(e)
        | PipelineError::EstimatorIo(EstimatorIoError::Estimator(e)) => from_estimator(e),
        PipelineError::States(s) => from_states(s),
        PipelineError::Absorption(a) => from_absorption(a),
        PipelineError::Upstream { source, .. } => from_pipeline(source),
        PipelineError::MissingRoot { .. } => Some(Known::MissingRoot),
        _ => None,
    }
}

/// The first known error of a chain of causes (the library's transparent wrappers hide the
/// inner error from `source()`, so each wrapper is opened here).
fn known<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> Option<Known> {
    chain.into_iter().find_map(|c| {
        if let Some(e) = c.downcast_ref::<PipelineError>() {
            from_pipeline(e)
        } else if let Some(e) = c.downcast_ref::<EstimatorError>() {
            from_estimator(e)
        } else if let Some(EstimatorIoError::Estimator(e)) = c.downcast_ref::<EstimatorIoError>() {
            from_estimator(e)
        } else if let Some(e) = c.downcast_ref::<StatesError>() {
            from_states(e)
        } else if let Some(e) = c.downcast_ref::<AbsorptionError>() {
            from_absorption(e)
        } else {
            None
        }
    })
}

/// A threshold a little below the highest stability (so that state passes), 2 decimals.
fn below(max: f64) -> String {
    let t = (max * 100.0).floor() / 100.0;
    format!("{:.2}", t.clamp(0.0, 1.0))
}

fn hint(command: &str, k: &Known) -> Option<String> {
    const KERNEL: &str = "\"0.7*velocity + 0.3*connectivity\"";
    let estimators = matches!(command, "run" | "batch" | "macrostates");
    let full_run = matches!(command, "run" | "batch");
    Some(match (k, command) {
        (Known::NoneStable { max }, _) if estimators => format!(
            "lower the threshold (--stability-threshold {}), or take the 2 most stable macrostates (--terminal-method top_n --n-terminal 2; or --n-terminal 2 alone, used when the stability rule selects none)",
            below(*max)
        ),
        (Known::NoneStable { max }, "terminal-states") => format!(
            "lower the threshold (--threshold {}), or take the 2 most stable macrostates (--method top_n --n-states 2)",
            below(*max)
        ),
        (Known::ClosedSets { unit }, _) if full_run => format!(
            "more cells per terminal state (--n-cells 100), as many terminal states as closed sets (--terminal-method top_n --n-terminal {unit}), or more connectivity (--kernel {KERNEL})"
        ),
        (Known::ClosedSets { unit }, "fates") => format!(
            "re-select the terminal states (`cellfate terminal-states --n-cells 100` or `cellfate terminal-states --method top_n --n-states {unit}`), or recompute the transition matrix (`cellfate kernel --kernel {KERNEL}`)"
        ),
        (Known::Unreachable, _) if full_run => {
            "add a connectivity kernel: --kernel \"0.8*velocity + 0.2*connectivity\"".to_string()
        }
        (Known::Unreachable, "fates") => "recompute the transition matrix with a connectivity kernel (`cellfate kernel --kernel \"0.8*velocity + 0.2*connectivity\"`), or set more terminal states (`cellfate terminal-states`)".to_string(),
        (Known::MissingRoot, _) if full_run => {
            "give a root: --root-cluster NAME (a cluster of --cluster-key, default clusters) or --root-cell CELL".to_string()
        }
        (
            Known::TopNTooMany {
                n_states,
                macrostates,
            },
            _,
        ) if estimators => format!(
            "--n-terminal {n_states} is more than the {macrostates} macrostates: give --n-terminal {macrostates} or fewer (or more macrostates with --n-states)"
        ),
        (
            Known::TopNTooMany {
                n_states,
                macrostates,
            },
            "terminal-states",
        ) => format!(
            "--n-states {n_states} is more than the {macrostates} macrostates: give --n-states {macrostates} or fewer"
        ),
        (Known::MissingRoot, "macrostates") => "compute the pseudotime first (`cellfate pseudotime --root-cluster NAME`), or run everything with `cellfate run --root-cluster NAME`".to_string(),
        _ => return None,
    })
}

/// Hints for `error` raised by `command` (a subcommand name), in that command's flags.
pub(crate) fn for_anyhow(command: &str, error: &anyhow::Error) -> Vec<String> {
    known(error.chain())
        .and_then(|k| hint(command, &k))
        .into_iter()
        .collect()
}

/// Hints for a pipeline error of `command` (`batch` records them with each sample's error).
pub(crate) fn for_pipeline(command: &str, error: &PipelineError) -> Vec<String> {
    let cause: &(dyn Error + 'static) = error;
    known([cause])
        .and_then(|k| hint(command, &k))
        .into_iter()
        .collect()
}
