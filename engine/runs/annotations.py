"""The annotations of runs, kept on the server beside the run cache. No torch, no Streamlit.

What people make on a run (cluster names, cell groups, DE and marker results, how to re-open its
data) is kept here so that a link opened in any browser restores it.

One SQLite file, ``<cache_dir>/annotations.sqlite``, in WAL mode: readers never block the writer,
each write is one transaction (atomic: a crash never leaves half an item), and SQLite's own locking
serialises writers from threads and processes. An item is ``(run_id, kind, key) -> JSON value``;
writing an item replaces it whole, so the last writer wins per item and sessions editing different
items (two groups, two clusters' names) never overwrite each other.

Kinds used by the dashboard: ``cluster_names`` (key ``"<resolution>|<cluster id>"``, value the name),
``group`` (key the group's name, value ``{"cells": [...], "order": n}``), ``de`` and ``markers``
(key a description of the comparison, value its parameters and table as records) and ``dataset``
(key ``""``: how to read the run's data again and the QC settings that produced its cells) and
``workspace`` (key ``"name"``: the name the user gave the run's workspace; key ``"opened"``: when a
session last opened the run, see :meth:`AnnotationStore.touch`).

The file carries a format version (table ``meta``); a store written by a newer format is refused
rather than misread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["FORMAT_VERSION", "FILE_NAME", "AnnotationStore", "StoreFormatError"]

FORMAT_VERSION = 1
FILE_NAME = "annotations.sqlite"
KINDS = ("cluster_names", "group", "de", "markers", "dataset", "workspace")
# How long a writer waits for another writer's transaction before giving up (seconds).
BUSY_TIMEOUT = 30.0


class StoreFormatError(RuntimeError):
    """The store was written in a format this code does not know (a newer version)."""


class AnnotationStore:
    """The annotations of every run in one cache folder. Cheap to create: open one per use.

    Each method opens its own connection (SQLite connections must not cross threads), so one store
    object may be shared by threads and used from several processes at once.
    """

    def __init__(self, cache_dir: str | os.PathLike[str]):
        self.path = Path(cache_dir) / FILE_NAME
        self._ready = False

    # ---- connection ------------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self._ready = False  # removed since (the cache cleared): create the tables again
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            if not self._ready:
                self._create(con)
                self._ready = True
            yield con
        finally:
            con.close()

    @staticmethod
    def _use_wal(con: sqlite3.Connection) -> None:
        """Switch the file to WAL (once: it stays so).

        Connections racing to do it on a new file get "database is locked" at once, without SQLite's
        busy wait: wait and try again here instead.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    con.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _create(self, con: sqlite3.Connection) -> None:
        self._use_wal(con)
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.execute(
                "CREATE TABLE IF NOT EXISTS items (run_id TEXT NOT NULL, kind TEXT NOT NULL, "
                "key TEXT NOT NULL, value_json TEXT NOT NULL, updated REAL NOT NULL, "
                "PRIMARY KEY (run_id, kind, key))")
            con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format_version', ?)",
                        (str(FORMAT_VERSION),))
            found = int(con.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()[0])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        if found > FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.path} was written by a newer Atlas Explorer (annotation format {found}, this "
                f"one reads up to {FORMAT_VERSION}): update this installation, or move the file away.")

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown annotation kind {kind!r}; one of {', '.join(KINDS)}")

    # ---- reading -----------------------------------------------------------------------------
    def format_version(self) -> int:
        """The format version recorded in the file."""
        with self._connect() as con:
            return int(con.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()[0])

    def get(self, run_id: str, kind: str, key: str, default: Any = None) -> Any:
        """One item's value, or ``default`` when there is none."""
        self._check_kind(kind)
        with self._connect() as con:
            row = con.execute("SELECT value_json FROM items WHERE run_id = ? AND kind = ? AND key = ?",
                              (run_id, kind, key)).fetchone()
        return default if row is None else json.loads(row[0])

    def items(self, run_id: str, kind: str, *, prefix: str = "") -> dict[str, Any]:
        """Every item of one kind of a run (keys starting with ``prefix``), oldest write first."""
        self._check_kind(kind)
        with self._connect() as con:
            rows = con.execute(
                "SELECT key, value_json FROM items WHERE run_id = ? AND kind = ? AND substr(key, 1, ?) = ? "
                "ORDER BY updated, key", (run_id, kind, len(prefix), prefix)).fetchall()
        return {key: json.loads(value) for key, value in rows}

    def stamp(self, run_id: str, kind: str) -> tuple[int, float]:
        """(number of items, latest write time) of one kind of a run: changes whenever they do."""
        self._check_kind(kind)
        with self._connect() as con:
            count, latest = con.execute("SELECT count(*), max(updated) FROM items WHERE run_id = ? AND kind = ?",
                                        (run_id, kind)).fetchone()
        return int(count), float(latest or 0.0)

    def summary(self) -> dict[str, dict[str, tuple[int, float]]]:
        """For every run with items: kind -> (number of items, latest write time), in one query."""
        with self._connect() as con:
            rows = con.execute("SELECT run_id, kind, count(*), max(updated) FROM items "
                               "GROUP BY run_id, kind").fetchall()
        found: dict[str, dict[str, tuple[int, float]]] = {}
        for run_id, kind, count, latest in rows:
            found.setdefault(run_id, {})[kind] = (int(count), float(latest or 0.0))
        return found

    def values(self, kind: str, key: str) -> dict[str, Any]:
        """The value of item ``(kind, key)`` of every run that has one: run id -> value."""
        self._check_kind(kind)
        with self._connect() as con:
            rows = con.execute("SELECT run_id, value_json FROM items WHERE kind = ? AND key = ?",
                               (kind, key)).fetchall()
        return {run_id: json.loads(value) for run_id, value in rows}

    # ---- writing -----------------------------------------------------------------------------
    def put(self, run_id: str, kind: str, key: str, value: Any) -> None:
        """Write one item (replacing it whole: the last writer wins)."""
        self.put_many(run_id, kind, {key: value})

    def put_many(self, run_id: str, kind: str, values: dict[str, Any], *, delete: tuple[str, ...] = ()) -> None:
        """Write several items and delete others of one kind in one transaction."""
        self._check_kind(kind)
        rows = [(run_id, kind, str(k), json.dumps(v), time.time()) for k, v in values.items()]
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany("DELETE FROM items WHERE run_id = ? AND kind = ? AND key = ?",
                                [(run_id, kind, k) for k in delete])
                con.executemany(
                    "INSERT INTO items (run_id, kind, key, value_json, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (run_id, kind, key) DO UPDATE SET value_json = excluded.value_json, "
                    "updated = excluded.updated", rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def touch(self, run_id: str) -> None:
        """Note that a session opened run ``run_id`` now (its workspace's "last used")."""
        self.put(run_id, "workspace", "opened", time.time())

    def delete(self, run_id: str, kind: str, key: str) -> None:
        """Remove one item (no error when absent)."""
        self.put_many(run_id, kind, {}, delete=(key,))

    def delete_run(self, run_id: str) -> None:
        """Remove every item of a run (when the run is deleted)."""
        with self._connect() as con:
            con.execute("DELETE FROM items WHERE run_id = ?", (run_id,))
