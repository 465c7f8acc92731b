//! The single registry of AnnData slot names, mirroring CellRank's `_utils/_key.py`, so that
//! files written by cellfate open in CellRank (`GPCCA.from_adata`, `PrecomputedKernel`) and
//! scanpy.

use cellfate_kernels::Direction;

/// The slot path `obs/{key}` (a column of `obs`).
pub fn obs(key: &str) -> String {
    format!("obs/{key}")
}
/// The slot path `obsm/{key}`.
pub fn obsm(key: &str) -> String {
    format!("obsm/{key}")
}
/// The slot path `obsp/{key}`.
pub fn obsp(key: &str) -> String {
    format!("obsp/{key}")
}
/// The slot path `varm/{key}`.
pub fn varm(key: &str) -> String {
    format!("varm/{key}")
}
/// The slot path `uns/{key}`.
pub fn uns(key: &str) -> String {
    format!("uns/{key}")
}
/// The slot path `layers/{key}`, or `X` for `"X"`.
pub fn layer(key: &str) -> String {
    if key == "X" {
        "X".into()
    } else {
        format!("layers/{key}")
    }
}

/// `obsp["connectivities"]`: scanpy's kNN connectivities.
pub const CONNECTIVITIES: &str = "connectivities";
/// `obsp["distances"]`: scanpy's kNN distances.
pub const DISTANCES: &str = "distances";

/// `obsp["T_fwd"|"T_bwd"]`: the transition matrix.
pub fn transition(d: Direction) -> String {
    format!("T_{}", d.suffix())
}
/// `uns["T_fwd_params"]`: the kernel's parameters next to the matrix.
pub fn transition_params(d: Direction) -> String {
    format!("T_{}_params", d.suffix())
}
/// `uns["eigendecomposition_fwd"]`.
pub fn eigendecomposition(d: Direction) -> String {
    format!("eigendecomposition_{}", d.suffix())
}
/// `obsm["schur_vectors_fwd"]`.
pub fn schur_vectors(d: Direction) -> String {
    format!("schur_vectors_{}", d.suffix())
}
/// `uns["schur_matrix_fwd"]`.
pub fn schur_matrix(d: Direction) -> String {
    format!("schur_matrix_{}", d.suffix())
}
/// `obs["macrostates_fwd"]`.
pub fn macrostates(d: Direction) -> String {
    format!("macrostates_{}", d.suffix())
}
/// `obsm["macrostates_fwd_memberships"]`.
pub fn memberships(key: &str) -> String {
    format!("{key}_memberships")
}
/// `uns["coarse_fwd"]`.
pub fn coarse(d: Direction) -> String {
    format!("coarse_{}", d.suffix())
}
/// `uns["coarse_T_fwd"]`: the coarse-grained transition matrix as a plain array (the layout
/// of the reference recipe's files; cellfate writes [`coarse`]).
pub fn coarse_transition(d: Direction) -> String {
    format!("coarse_T_{}", d.suffix())
}
/// `obs["term_states_fwd"]` (forward) / `obs["init_states_fwd"]` (backward terminal states
/// are initial states, CellRank's convention).
pub fn terminal_states(d: Direction) -> String {
    format!("term_states_{}", d.suffix())
}
/// `obs["init_states_fwd"]`.
pub fn initial_states(d: Direction) -> String {
    format!("init_states_{}", d.suffix())
}
/// `obs["term_states_fwd_probs"]`.
pub fn probs(key: &str) -> String {
    format!("{key}_probs")
}
/// `obsm["lineages_fwd"]`: fate probabilities.
pub fn lineages(d: Direction) -> String {
    format!("lineages_{}", d.suffix())
}
/// `obsm["absorption_times_fwd"]`.
pub fn absorption_times(d: Direction) -> String {
    format!("absorption_times_{}", d.suffix())
}
/// `obs["priming_degree_fwd"]`.
pub fn priming_degree(d: Direction) -> String {
    format!("priming_degree_{}", d.suffix())
}
/// `varm["terminal_lineage_drivers"]` / `varm["initial_lineage_drivers"]`.
pub fn lineage_drivers(d: Direction) -> &'static str {
    match d {
        Direction::Forward => "terminal_lineage_drivers",
        Direction::Backward => "initial_lineage_drivers",
    }
}
/// `uns["{key}_names"]`: column names of an obsm matrix.
pub fn names(key: &str) -> String {
    format!("{key}_names")
}
/// `uns["{key}_colors"]`: colours of a categorical.
pub fn colors(key: &str) -> String {
    format!("{key}_colors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cellrank_names() {
        assert_eq!(transition(Direction::Forward), "T_fwd");
        assert_eq!(transition_params(Direction::Backward), "T_bwd_params");
        assert_eq!(
            memberships(&macrostates(Direction::Forward)),
            "macrostates_fwd_memberships"
        );
        assert_eq!(
            probs(&terminal_states(Direction::Forward)),
            "term_states_fwd_probs"
        );
        assert_eq!(names(&lineages(Direction::Forward)), "lineages_fwd_names");
        assert_eq!(
            lineage_drivers(Direction::Forward),
            "terminal_lineage_drivers"
        );
    }
}
