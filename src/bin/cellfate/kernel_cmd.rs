//! `cellfate kernel`: compute a kernel expression on an .h5ad file and write `T_fwd`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use cellfate::io::{H5adEdit, H5adReader};
use cellfate::kernels::{expr, save, Direction, Kernel, KernelOutput, KernelSpec};

/// Arguments of `cellfate kernel`.
#[derive(Debug, clap::Args)]
pub(crate) struct KernelArgs {
    /// Input .h5ad file (never modified unless --in-place).
    input: PathBuf,
    /// Output .h5ad file (a copy of the input with the kernel added).
    #[arg(short, long, required_unless_present = "in_place")]
    output: Option<PathBuf>,
    /// Write into the input file itself (atomically, via a temporary file); not with -o.
    #[arg(long, conflicts_with = "output")]
    in_place: bool,
    /// Kernel expression, e.g. "0.8*velocity + 0.2*connectivity", "pseudotime", "~velocity".
    #[arg(long, default_value = "0.8*velocity + 0.2*connectivity")]
    kernel: String,
    /// Set a kernel parameter: KERNEL.NAME=VALUE (e.g. velocity.similarity=cosine,
    /// pseudotime.time_key=latent_time, connectivity.density_normalize=false). Repeatable.
    #[arg(long = "param", value_name = "KERNEL.NAME=VALUE")]
    params: Vec<String>,
    /// TOML file of kernel parameters: one table per kernel ([velocity], [pseudotime], ...).
    #[arg(long = "params-file", value_name = "FILE.toml")]
    params_file: Option<PathBuf>,
    /// obsp key to write (default T_fwd, or T_bwd for a backward kernel).
    #[arg(long)]
    key: Option<String>,
    /// Also save the computed kernel (spec + matrix) to a binary file.
    #[arg(long, value_name = "K.bin")]
    save_kernel: Option<PathBuf>,
    /// Load a kernel saved with --save-kernel instead of computing one.
    #[arg(long, value_name = "K.bin", conflicts_with_all = ["kernel", "params", "params_file"])]
    load_kernel: Option<PathBuf>,
    /// Also compute the randomised control (velocities permuted across cells with random
    /// signs) and write it as obsp["<key>_rnd"].
    #[arg(long)]
    random_control: bool,
    /// Seed of the randomised control (default 0).
    #[arg(long, requires = "random_control")]
    seed: Option<u64>,
    /// Also write the transition-weighted displacement on obsm["X_<BASIS>"] as
    /// obsm["<key>_<BASIS>"] (CellRank's projection, e.g. --projection umap) and, for a
    /// forward kernel, obsm["velocity_<BASIS>"] (scVelo's key, read by its stream plots;
    /// replaces one already there).
    #[arg(long, value_name = "BASIS")]
    projection: Option<String>,
    /// With a labeling_time kernel: also write layers["velocity_T"] and var["gamma_labeling"].
    #[arg(long)]
    write_velocity: bool,
    /// Labeling time for a labeling_time kernel computed from the raw new/total layers: a
    /// number for all cells or an obs column (default obs labeling_time).
    #[arg(long, value_name = "TIME|COLUMN")]
    labeling_time: Option<cellfate::upstream::labeling::LabelingTime>,
}

/// Builds the kernel spec from the expression, `--param`s and a TOML file.
pub(crate) fn build_spec(
    expression: &str,
    params: &[String],
    file: Option<&Path>,
) -> anyhow::Result<KernelSpec> {
    let mut spec = expr::parse(expression)?;
    if let Some(f) = file {
        let text = crate::read_text(f)?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("{}: not valid TOML", f.display()))?;
        for (kernel, values) in table {
            let Some(values) = values.as_table() else {
                bail!(
                    "{}: `{kernel}` must be a table of parameters ([{kernel}])",
                    f.display()
                );
            };
            for (name, value) in values {
                let json = serde_json::to_string(value)?;
                spec.set_param(&kernel, name, &json)
                    .with_context(|| format!("{}: [{kernel}] {name}", f.display()))?;
            }
        }
    }
    for p in params {
        let (lhs, value) = p
            .split_once('=')
            .with_context(|| format!("--param {p:?}: expected KERNEL.NAME=VALUE"))?;
        let (kernel, name) = lhs
            .split_once('.')
            .with_context(|| format!("--param {p:?}: expected KERNEL.NAME=VALUE"))?;
        spec.set_param(kernel.trim(), name.trim(), value.trim())?;
    }
    spec.validate()?;
    Ok(spec)
}

impl KernelArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        let mut files: Vec<PathBuf> = self.output.iter().cloned().collect();
        if self.in_place {
            files.push(self.input.clone());
        }
        files.extend(self.save_kernel.clone());
        crate::Outputs::files(files)
    }
}

/// Writes bytes to `path` atomically (an exclusive temporary file in the same directory, then
/// rename; special files and links refused: [`cellfate::output`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(cellfate::output::write_atomic(path, bytes)?)
}

pub(crate) fn run(a: KernelArgs) -> anyhow::Result<String> {
    let reader = H5adReader::open(&a.input)?;
    let start = Instant::now();
    let out: KernelOutput = if let Some(k) = &a.load_kernel {
        let bytes = crate::read_bytes(k)?;
        let out = save::from_bytes(&bytes).with_context(|| format!("loading {}", k.display()))?;
        let n = reader.n_obs()?;
        if out.transition.n_cells() != n {
            bail!(
                "{}: the kernel has {} cells but {} has {n}",
                k.display(),
                out.transition.n_cells(),
                a.input.display()
            );
        }
        out
    } else {
        let mut params = a.params.clone();
        match &a.labeling_time {
            Some(cellfate::upstream::labeling::LabelingTime::Value(v)) => {
                params.push(format!("labeling_time.time_value={v}"));
            }
            Some(cellfate::upstream::labeling::LabelingTime::Column(c)) => {
                params.push(format!("labeling_time.time_key={c}"));
            }
            None => {}
        }
        if a.labeling_time.is_some() && !a.kernel.contains("labeling") && !a.kernel.contains("ltk")
        {
            bail!(
                "--labeling-time applies to a labeling_time kernel; the expression {:?} has none",
                a.kernel
            );
        }
        let spec = build_spec(&a.kernel, &params, a.params_file.as_deref())?;
        let labeling = spec
            .leaves()
            .iter()
            .any(|l| matches!(l, KernelSpec::LabelingTime(_)));
        spec.compute(&reader).with_context(|| {
            let hint = if labeling && a.labeling_time.is_none() {
                " (a labeling_time kernel computed from new/total layers needs a labeling time: --labeling-time T|COLUMN)"
            } else {
                ""
            };
            format!("computing {} on {}{hint}", a.kernel, a.input.display())
        })?
    };
    let secs = start.elapsed().as_secs_f64();
    let mut edit = H5adEdit::new(&a.input);
    let key = a
        .key
        .clone()
        .unwrap_or_else(|| cellfate::io::keys::transition(out.transition.direction()));
    cellfate::kernel_io::write_kernel(&mut edit, &out, Some(&key));
    let mut msg = format!(
        "{}: {} cells, {} transitions, computed in {secs:.2} s -> obsp[\"{key}\"]\n",
        out.effective.name(),
        out.transition.n_cells(),
        out.transition.nnz()
    );
    if a.random_control {
        let seed = a.seed.unwrap_or(0);
        let c = cellfate::kernel_io::random_control(&reader, &out, &key, seed, &mut edit)
            .context("computing the randomised control")?;
        msg.push_str(&format!(
            "randomised control (seed {seed}) -> obsp[\"{}\"]; flow coherence on {}: {:.3} real, {:.3} control, score {:.3} -> obs[\"random_control_score\"], uns[\"random_control\"]\n",
            c.key, c.basis, c.real, c.control, c.score
        ));
    }
    if let Some(basis) = &a.projection {
        use cellfate::kernels::CellSource;
        let emb = reader
            .obsm(&format!("X_{basis}"))
            .or_else(|_| reader.obsm(basis))
            .with_context(|| format!("--projection {basis}: no obsm[\"X_{basis}\"]"))?;
        let p = cellfate::kernels::projection::project(&out.transition, &emb);
        let basis = basis.strip_prefix("X_").unwrap_or(basis);
        if out.transition.direction() == Direction::Forward {
            // scVelo's key, so that its velocity_embedding(_stream/_grid) plots read it.
            edit.set(
                &format!("obsm/velocity_{basis}"),
                cellfate::io::Element::from_f64_matrix(emb.nrows(), emb.ncols(), p.clone()),
            );
            msg.push_str(&format!(
                "projection on {basis} -> obsm[\"velocity_{basis}\"] (scVelo's key) and "
            ));
        } else {
            msg.push_str(&format!("projection on {basis} -> "));
        }
        edit.set(
            &format!("obsm/{key}_{basis}"),
            cellfate::io::Element::from_f64_matrix(emb.nrows(), emb.ncols(), p),
        );
        msg.push_str(&format!("obsm[\"{key}_{basis}\"]\n"));
    }
    if a.write_velocity {
        let lab = out
            .effective
            .leaves()
            .into_iter()
            .find_map(|l| match l {
                KernelSpec::LabelingTime(p) => Some(p.clone()),
                _ => None,
            })
            .context("--write-velocity needs a labeling_time kernel in the expression")?;
        let lv = lab.labeling_velocity(&reader)?;
        let (n, g) = (lv.velocity.nrows(), lv.velocity.ncols());
        edit.set(
            "layers/velocity_T",
            cellfate::io::Element::from_f64_matrix(n, g, lv.velocity.to_f64()),
        );
        edit.set(
            "var/gamma_labeling",
            cellfate::io::Element::from_f64(lv.gamma.clone()),
        );
        msg.push_str(&format!(
            "labeling velocity ({}) -> layers[\"velocity_T\"], var[\"gamma_labeling\"]\n",
            lv.estimator
        ));
    }
    if let Some(path) = &a.save_kernel {
        write_atomic(path, &save::to_bytes(&out)?)?;
        msg.push_str(&format!("saved kernel -> {}\n", path.display()));
    }
    if a.in_place {
        edit.write_in_place()?;
        msg.push_str(&format!("wrote {}\n", a.input.display()));
    } else if let Some(o) = &a.output {
        edit.write_to(o)?;
        msg.push_str(&format!("wrote {}\n", o.display()));
    }
    Ok(msg)
}
