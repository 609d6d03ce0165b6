"""The server's start-up warm-up: what it compiles, so a user's first click does not."""

import subprocess
import sys

CHECK = """
from engine.analysis import _kernels
from engine.model import nb_kernel
from engine.warmup import warm_up

kernels = (_kernels.row_scales, _kernels.scatter_log_keys, _kernels.gene_run_sums, nb_kernel.nb_rows)
assert not any(kernel.signatures for kernel in kernels), "compiled before the warm-up"
assert warm_up() > 0
print(" ".join(kernel.__name__ for kernel in kernels if not kernel.signatures))
"""


def test_warm_up_loads_the_training_and_wilcoxon_kernels():
    """In a fresh process (the test session may have compiled them already)."""
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"not compiled or loaded by the warm-up: {done.stdout}"
