"""The Data page says the upload cap and where larger files go (issue 15).

Streamlit refuses a file above ``server.maxUploadSize`` in the browser ("File must be 2.0GB or
smaller.") before any byte reaches the server, so the page cannot answer such an upload itself:
it says the cap and the remedy next to the upload box, and in the box's help.
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from .conftest import REPO


def test_upload_box_says_the_cap_and_the_server_folder(monkeypatch):
    monkeypatch.delenv("ATLAS_DATA_DIR", raising=False)
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "Files up to 2 GB (2,048 MB)." in captions  # .streamlit/config.toml: maxUploadSize = 2048
    assert ("accepts uploads up to 2 GB (2,048 MB); a larger file is refused by the upload box. Put larger "
            "files in the server folder instead (ATLAS_DATA_DIR") in captions
    uploader = at.get("file_uploader")[0]
    assert "ATLAS_DATA_DIR" in uploader.help
    # with the server folder switched off, its tab says that larger files are opened that way
    assert any("larger than the upload limit of 2 GB (2,048 MB) are opened this way" in i.value for i in at.info)
