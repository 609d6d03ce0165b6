"""Security: no unpickling of user data, upload names never become paths.

Also: the server folder is fenced and off by default, uploads are capped, Streamlit's XSRF
protection stays on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from dashboard import loading
from engine.model.params import RunParams
from engine.reading.load import read_counts
from engine.runs.fit import fit
from engine.runs.records import CorruptRunError
from engine.runs.storage import load_run

from .conftest import REPO

# Every Python file we ship, in every subpackage.
SOURCES = sorted([*REPO.glob("engine/**/*.py"), *REPO.glob("dashboard/**/*.py"), *REPO.glob("pages/**/*.py")])
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            yield name, node


def keyword(node: ast.Call, name: str):
    value = next((k.value for k in node.keywords if k.arg == name), None)
    return value.value if isinstance(value, ast.Constant) else value


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_unpickling_anywhere_in_the_code(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            assert not UNSAFE_MODULES & {str(n).split(".")[0] for n in names}, f"{path}:{node.lineno}"
    for name, node in calls(tree):
        where = f"{path.relative_to(REPO)}:{node.lineno}"
        if name == "load" and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "torch":
            assert keyword(node, "weights_only") is True, f"torch.load without weights_only=True at {where}"
        assert name != "read_pickle", where
        assert not (isinstance(node.func, ast.Name) and name in {"eval", "exec"}), where
        assert keyword(node, "allow_pickle") is not True, f"allow_pickle=True at {where}"


@pytest.fixture(scope="module")
def cached_run(kang_small_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("runs")
    adata = read_counts(kang_small_path)[:300].copy()
    return cache, fit(adata, params=RunParams(max_epochs=1), cache_dir=cache)


class _Payload:
    """Unpickling this creates a file: proof that code from the file would have run."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_weights_with_a_pickle_payload_are_refused_and_never_run(cached_run, tmp_path):
    cache, run = cached_run
    folder = tmp_path / run.run_id
    folder.mkdir()
    for name in ("run.json", "history.csv", "latent.npy"):
        (folder / name).write_bytes((cache / run.run_id / name).read_bytes())
    target = tmp_path / "pwned"
    state = dict(run.module.state_dict())
    state["evil"] = _Payload(target)
    torch.save(state, folder / "model.pt")  # a real torch zip, with a malicious object inside
    with pytest.raises(CorruptRunError, match="corrupt"):
        load_run(tmp_path, run.run_id)
    assert not target.exists()


def test_latent_stored_as_pickled_objects_is_refused(cached_run, tmp_path):
    cache, run = cached_run
    folder = tmp_path / run.run_id
    folder.mkdir()
    for name in ("run.json", "history.csv", "model.pt"):
        (folder / name).write_bytes((cache / run.run_id / name).read_bytes())
    np.save(folder / "latent.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(CorruptRunError, match="latent|pickle|corrupt"):
        load_run(tmp_path, run.run_id)


@pytest.mark.parametrize("name", [
    "../../../tmp/evil.h5ad", "/etc/cron.d/evil.h5ad", "..\\..\\windows\\evil.h5ad",
    "sub/dir/../../x.h5ad", "~/.bashrc.h5ad", "a" * 5000 + ".h5ad", "ünïcødé ☃.h5ad", "$(rm -rf ~).h5ad",
])
def test_uploaded_file_names_are_never_used_as_paths(name, kang_small_path, monkeypatch):
    seen: list[Path] = []
    real = loading.eio.read_counts

    def spy(path, **kwargs):
        seen.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(loading.eio, "read_counts", spy)
    data = kang_small_path.read_bytes() + name.encode("utf-8", "surrogateescape")[:64]  # a fresh cache key
    dataset = loading.read_upload(name, data)
    assert dataset.name == name  # shown to the user as text only
    assert len(seen) == 1
    assert seen[0].name == "upload.h5ad" and seen[0].parent.name.startswith("atlas-upload-")
    assert not seen[0].parent.exists()  # the temporary folder is gone after reading


@pytest.mark.parametrize("name", ["evil.h5ad.exe", "payload.pkl", "model.pt", "noext"])
def test_uploads_of_other_types_are_refused_by_suffix(name):
    with pytest.raises(ValueError, match="Unsupported file type"):
        loading.read_upload(name, b"\x80\x04 whatever")


def test_server_folder_is_off_by_default(monkeypatch):
    monkeypatch.delenv(loading.DATA_DIR_ENV, raising=False)
    assert loading.server_data_dir() is None and loading.server_files() == []
    with pytest.raises(ValueError, match="switched off.*ATLAS_DATA_DIR"):
        loading.resolve_server_file("kang.h5ad")


def test_server_folder_refuses_anything_outside_it(monkeypatch, tmp_path, kang_small_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "kang.h5ad").write_bytes(kang_small_path.read_bytes())
    secret = tmp_path / "secret.h5ad"
    secret.write_bytes(kang_small_path.read_bytes())
    (root / "link.h5ad").symlink_to(secret)  # a symlink pointing out of the folder
    monkeypatch.setenv(loading.DATA_DIR_ENV, str(root))
    assert loading.resolve_server_file("sub/kang.h5ad") == (root / "sub" / "kang.h5ad").resolve()
    for name in ["../secret.h5ad", str(secret), "sub/../../secret.h5ad", "link.h5ad", "", ".", "/"]:
        with pytest.raises(ValueError, match="outside the server data folder"):
            loading.resolve_server_file(name)
    with pytest.raises(ValueError, match="does not exist"):
        loading.resolve_server_file("missing.h5ad")


def test_data_page_says_the_server_folder_is_off(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv(loading.DATA_DIR_ENV, raising=False)
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert any("switched off" in i.value and loading.DATA_DIR_ENV in i.value for i in at.info)
    assert not any(b.label == "Load this file" for b in at.button)


def server_config() -> dict:
    return tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]


def test_upload_cap_is_set_and_documented_with_the_same_number():
    cap_mb = server_config()["maxUploadSize"]
    assert 0 < cap_mb <= 4096
    # The Data page states the cap it reads from the server's options, so it cannot drift.
    page = (REPO / "pages" / "data.py").read_text()
    assert "loading.upload_limit_text()" in page
    assert loading.upload_limit_text(cap_mb) == f"{cap_mb / 1024:g} GB ({cap_mb:,} MB)"
    assert "server folder" in loading.too_large_text(loading.upload_limit_text(cap_mb))
    readme = (REPO / "README.md").read_text()
    assert f"(up to {cap_mb // 1024} GB)" in readme
    security = readme[readme.index("## Security"):]
    assert f"maxUploadSize = {cap_mb}" in security


def test_xsrf_protection_is_on():
    config = server_config()
    assert config.get("enableXsrfProtection", True) is True


def test_streamlit_reads_the_project_config(monkeypatch):
    """The options above are what the server really runs with (read the way `streamlit run` does)."""
    from streamlit import config as stconfig

    monkeypatch.chdir(REPO)
    stconfig.get_config_options(force_reparse=True)
    try:
        assert stconfig.get_option("server.enableXsrfProtection") is True
        assert stconfig.get_option("server.maxUploadSize") == server_config()["maxUploadSize"]
    finally:
        stconfig.get_config_options(force_reparse=True)

