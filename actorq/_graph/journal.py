"""The run journal: SQLite (stdlib) in WAL mode, one row per finished task.

Tables::

    meta   (k TEXT PRIMARY KEY, v TEXT)     format, graph digest, task count, created
    tasks  (key TEXT PRIMARY KEY,           the node's stable key (Node.key)
            state TEXT,                     "done" | "failed"
            attempts INTEGER,
            kind INTEGER, result BLOB,      a small value, pickled (kind 1); for a large one
                                            (kind 3) a reference to its file in the blob
                                            store ``<journal>.blobs/`` (see blobs.py)
            error BLOB,                     pickled (exception, traceback text)
            updated REAL)                   time.time()

Rows are written as tasks finish and committed once per scheduler round, so a run
killed with SIGKILL loses at most the round in progress: those tasks run again (their
attempts are counted anew); every committed "done" row is skipped on the next run and
its result returned. Opening checks everything first (writable, a journal, this graph's)
so that a bad journal is reported before any task runs, and removes blob files that no
row references (left by a run killed before its round was committed).
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from actorq._errors import GraphError
from actorq._graph.blobs import blob_name, store_for, sweep

FORMAT = "actorq-journal-2"
BLOB = 3  # the kind of a row whose result is in the blob store


class Journal:
    """An open journal for one graph (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], digest: str, tasks: int) -> None:
        self.path = os.fspath(path)
        self.store = store_for(self.path)
        self._db = self._open(digest, tasks)
        self._pending = 0
        try:
            os.makedirs(self.store, exist_ok=True)
        except OSError as exc:
            self._db.close()
            msg = (f"journal {self.path!r}: its blob folder {self.store!r} cannot be "
                   f"created ({exc}); pass a journal path in a folder you can write to")
            raise GraphError(msg) from exc
        refs = self._db.execute(
            "SELECT result FROM tasks WHERE state = 'done' AND kind = ?", (BLOB,)).fetchall()
        sweep(self.store, {blob_name(ref) for (ref,) in refs})

    def _open(self, digest: str, tasks: int) -> sqlite3.Connection:
        path = self.path
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or (
                os.path.exists(path) and not os.access(path, os.W_OK)):
            msg = (f"journal {path!r} cannot be written (its folder {folder!r} is missing "
                   "or not writable); pass a path you can write to")
            raise GraphError(msg)
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            msg = f"journal {path!r} cannot be opened: {exc}"
            raise GraphError(msg) from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS tasks (key TEXT PRIMARY KEY, state TEXT, "
                       "attempts INTEGER, kind INTEGER, result BLOB, error BLOB, updated REAL)")
            meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
            if not meta:
                db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", FORMAT), ("graph", digest), ("tasks", str(tasks)),
                    ("created", time.strftime("%Y-%m-%d %H:%M:%S"))])
        except sqlite3.DatabaseError as exc:
            db.close()
            msg = (f"journal {path!r} is not an actorq journal, or it is corrupt ({exc}); "
                   "delete it or pass another path")
            raise GraphError(msg) from exc
        if meta and meta.get("format") == "actorq-journal-1":
            db.close()
            msg = (f"journal {path!r} was written by an earlier version of actorq (format "
                   "actorq-journal-1, whose keys did not cover the functions' code); delete "
                   "it or pass another path")
            raise GraphError(msg)
        if meta and meta.get("format") != FORMAT:
            db.close()
            msg = (f"journal {path!r} is not an actorq journal (format "
                   f"{meta.get('format')!r}); delete it or pass another path")
            raise GraphError(msg)
        if meta and meta.get("graph") != digest:
            db.close()
            msg = (f"journal {path!r} belongs to a different graph ({meta.get('tasks')} "
                   f"tasks, created {meta.get('created')}); this graph has {tasks} tasks. "
                   "Resuming would mix results of two computations: delete the file or "
                   "pass another journal path")
            raise GraphError(msg)
        return db

    def finished(self) -> dict[str, tuple[int, int, Any]]:
        """Key -> (attempts, kind, payload) of every task journaled as done."""
        rows = self._db.execute(
            "SELECT key, attempts, kind, result FROM tasks WHERE state = 'done'").fetchall()
        return {key: (attempts, kind, payload) for key, attempts, kind, payload in rows}

    def _begin(self) -> None:
        if not self._pending:
            self._db.execute("BEGIN")
        self._pending += 1

    def done(self, key: str, attempts: int, kind: int, payload: Any) -> None:
        """Journal a finished task (committed at the next :meth:`commit`)."""
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO tasks VALUES (?, 'done', ?, ?, ?, NULL, ?)",
                         (key, attempts, kind, payload, time.time()))

    def failed(self, key: str, attempts: int, error: bytes) -> None:
        """Journal a task that failed for good (it runs again on the next run)."""
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO tasks VALUES (?, 'failed', ?, 0, NULL, ?, ?)",
                         (key, attempts, error, time.time()))

    def commit(self) -> None:
        """Make what was journaled since the last commit durable."""
        if self._pending:
            self._db.execute("COMMIT")
            self._pending = 0

    def close(self) -> None:
        """Commit and close; idempotent."""
        try:
            self.commit()
        finally:
            self._db.close()
