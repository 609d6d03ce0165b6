# Environment shared by the launch and test scripts (sourced, not run).
# Where training runs are cached (see README "Where results go").
export ATLAS_CACHE_DIR="${ATLAS_CACHE_DIR:-$PWD/.atlas/runs}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# numba's compiled kernels (UMAP layout) persist here, so a new server process does not recompile.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.atlas/numba_cache}"
