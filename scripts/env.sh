# Environment shared by the launch and test scripts (sourced, not run).
# Where training runs are cached (see README "Where results go").
export ATLAS_CACHE_DIR="${ATLAS_CACHE_DIR:-$PWD/.atlas/runs}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
