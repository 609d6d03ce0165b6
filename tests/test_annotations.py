"""The annotation store beside the run cache (issue 17 part 2).

Round trip, last writer wins, deletion, format version, and concurrent writes from threads and processes.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest

from engine.runs.annotations import FILE_NAME, FORMAT_VERSION, AnnotationStore, StoreFormatError

from .conftest import REPO


def test_round_trip_last_writer_wins_and_deletion(tmp_path):
    store = AnnotationStore(tmp_path)
    store.put("r1", "group", "B cells", {"cells": ["a", "b"], "order": 0})
    store.put("r1", "cluster_names", "1|3", "NK")
    store.put("r2", "group", "other run", {"cells": ["c"], "order": 0})
    # a new store object (another session, another process) reads what was written
    again = AnnotationStore(tmp_path)
    assert again.get("r1", "group", "B cells") == {"cells": ["a", "b"], "order": 0}
    assert again.items("r1", "group") == {"B cells": {"cells": ["a", "b"], "order": 0}}
    assert again.items("r1", "cluster_names", prefix="1|") == {"1|3": "NK"}
    assert again.items("r1", "cluster_names", prefix="0.5|") == {}
    assert again.get("r1", "group", "nope", default=7) == 7
    again.put("r1", "cluster_names", "1|3", "T cells")  # the last writer wins
    assert store.get("r1", "cluster_names", "1|3") == "T cells"
    before = store.stamp("r1", "group")
    assert before[0] == 1 and store.stamp("r1", "group") == before
    store.put("r1", "group", "B cells", {"cells": ["a"], "order": 0})
    assert store.stamp("r1", "group") != before
    store.delete("r1", "group", "B cells")
    assert store.items("r1", "group") == {}
    assert store.items("r2", "group") == {"other run": {"cells": ["c"], "order": 0}}
    store.delete_run("r2")
    assert store.items("r2", "group") == {}
    with pytest.raises(ValueError, match="unknown annotation kind"):
        store.put("r1", "colour", "x", 1)


def test_a_store_whose_file_was_removed_starts_again(tmp_path):
    store = AnnotationStore(tmp_path)
    store.put("r1", "group", "g", {"cells": ["a"], "order": 0})
    (tmp_path / FILE_NAME).unlink()
    for extra in ("-wal", "-shm"):
        (tmp_path / (FILE_NAME + extra)).unlink(missing_ok=True)
    assert store.items("r1", "group") == {}
    store.put("r1", "group", "g", {"cells": ["b"], "order": 0})
    assert store.get("r1", "group", "g") == {"cells": ["b"], "order": 0}


def test_format_version_is_written_and_a_newer_one_refused(tmp_path):
    assert AnnotationStore(tmp_path).format_version() == FORMAT_VERSION
    con = sqlite3.connect(tmp_path / FILE_NAME)
    con.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(StoreFormatError, match="newer"):
        AnnotationStore(tmp_path).get("r1", "group", "x")


def _write_many(cache_dir: str, writer: int, n: int) -> None:
    store = AnnotationStore(cache_dir)
    for i in range(n):
        store.put("run", "group", f"w{writer}-{i}", {"cells": [f"c{j}" for j in range(50)], "order": i})
        store.put("run", "cluster_names", "1|0", f"writer {writer}")  # everyone writes this one


def _check_after(tmp_path, writers: int, n: int) -> None:
    store = AnnotationStore(tmp_path)
    groups = store.items("run", "group")
    assert set(groups) == {f"w{w}-{i}" for w in range(writers) for i in range(n)}
    assert all(len(v["cells"]) == 50 for v in groups.values())
    assert store.get("run", "cluster_names", "1|0") in {f"writer {w}" for w in range(writers)}
    con = sqlite3.connect(tmp_path / FILE_NAME)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_concurrent_writes_from_threads_lose_nothing(tmp_path):
    threads = [threading.Thread(target=_write_many, args=(str(tmp_path), w, 25)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check_after(tmp_path, 8, 25)


def test_concurrent_writes_from_processes_lose_nothing(tmp_path):
    # Fresh interpreters, as separate servers or workers would be. Started as commands rather than
    # with multiprocessing's spawn: after an AppTest in the same pytest process, __main__ is a
    # Streamlit script that spawn would run again in each child.
    code = "import sys; from tests.test_annotations import _write_many; _write_many(sys.argv[1], int(sys.argv[2]), 25)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(w)], cwd=REPO) for w in range(4)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    _check_after(tmp_path, 4, 25)
