"""The torch boundary: reading, QC, gene selection and the command line's help load no torch.

Each case runs in a fresh interpreter, because this test process has long imported torch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

CASES = {
    "import engine": "import engine",
    "engine.read_counts": "import engine; engine.read_counts(FIXTURE)",
    "QC and highly variable genes": (
        "import engine\n"
        "from engine.preprocessing import qc, hvg\n"
        "a = engine.read_counts(FIXTURE)\n"
        "qc.calculate_qc_metrics(a)\n"
        "a = qc.apply_filters(a, qc.QCThresholds(min_genes=10))\n"
        "hvg.highly_variable_genes(a, n_top_genes=200)"
    ),
    "run records (ids, listing)": (
        "import engine\nfrom engine.runs import records\n"
        "a = engine.read_counts(FIXTURE)\n"
        "records.run_id(a, params=engine.RunParams(), batch_key='donor')\n"
        "records.list_runs('/nonexistent')"
    ),
    "annotation store": (
        "import tempfile\nfrom engine.runs.annotations import AnnotationStore\n"
        "AnnotationStore(tempfile.mkdtemp()).put('r', 'group', 'g', {'cells': ['a']})"
    ),
    "workspace list": (
        "import tempfile\nfrom engine.runs import workspaces\n"
        "d = tempfile.mkdtemp()\nworkspaces.list_workspaces(d)\nworkspaces.delete_workspace(d, 'ab' * 10)"
    ),
    "DE tables and groups": "from engine.analysis import de, wilcoxon",
    "python -m engine --help": (
        "import contextlib, io\nfrom engine.cli.main import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "for command in ('train', 'de', 'embed'):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main([command, '--help'])"
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_loads_no_torch(name):
    fixture = REPO / "tests" / "data" / "kang_small.h5ad"
    code = (f"FIXTURE = {str(fixture)!r}\n{CASES[name]}\nimport sys\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", f"{name} imported torch"


def test_the_boundary_test_can_fail():
    code = "import engine\nengine.fit\nimport sys\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.stdout.strip() == "True"  # engine.fit does need torch, and the check sees it
