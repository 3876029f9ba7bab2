"""The run journal: SQLite (stdlib) in WAL mode, one row per finished task.

Tables::

    meta   (k TEXT PRIMARY KEY, v TEXT)     format, graph digest, task count, created,
                                            "open" while a run uses it
    tasks  (key TEXT PRIMARY KEY,           the node's stable key (Node.key)
            state TEXT,                     "done" | "failed"
            attempts INTEGER,
            kind INTEGER, result BLOB,      a small value, pickled (kind 1); for a large one
                                            (kind 3) a reference to its file in the blob
                                            store ``<journal>.blobs/`` (see blobs.py)
            error BLOB,                     pickled (exception, traceback text)
            updated REAL)                   time.time()

Writes are off the scheduler's loop: the scheduler collects the rows of one round
(``done``/``failed``: a list append) and hands them over at the end of the round
(``commit``: one put on a bounded queue); the run's writer thread writes everything
queued in one transaction and commits it. If the disk is slower than the run, the
queue fills and the scheduler waits for room (``MAX_QUEUED`` rounds): memory stays
bounded, and so does what a crash can lose.

The contract:

* **SIGKILL of the whole program** loses only rows not yet committed: the tasks that
  finished in the last rounds (at most ``MAX_QUEUED`` rounds plus the transaction being
  written). They run again on the next run, with their attempts counted anew; nothing
  committed is lost (WAL, ``synchronous=NORMAL``: a commit survives the process being
  killed; only a power cut or OS crash may lose the last commits). The next run sees
  that the previous one did not end cleanly (``stats.extra["journal_unclean"]``) and
  logs a warning saying so.
* **Nothing is reported as journaled before it is**: ``committed`` counts rows whose
  transaction has committed (``stats.extra["journal_rows"]``), updated by the writer
  after the commit returned; :meth:`close` drains the queue and joins the writer, so
  ``system.run`` returns only once every row of the run is durable.
* A write that fails (disk full, the file removed, ...) ends the run with a
  ``GraphError`` naming the journal at the scheduler's next round, not silently.
* The writer thread ends with the run, also when it fails or is cancelled
  (``finish`` closes the journal on every path).

**One run at a time.** A run holds an exclusive lock (``flock``) on ``<journal>.lock``
from opening to closing; a second run given the same journal while the first is alive,
in this process or another, is refused with a ``GraphError`` naming the holder's pid,
before anything is touched. The kernel drops the lock of a killed process, so a
SIGKILLed run never blocks the next one (its pid stays in the file, the lock does not).

**Attempts across an interruption.** Before a batch is sent, its tasks' keys are
appended to ``<journal>.starts`` (one ``os.write`` on the scheduler's thread, no
transaction: it survives SIGKILL of the program as soon as it returns). A run that ends
with every task finished removes the file; a run that was killed (or stopped early)
leaves it, and the next run counts, per task not journaled as done, the attempts that
earlier runs started (``prior``): its stats report them (``TaskStats.interrupted``,
included in ``attempts``), and its journal rows carry the total. The file keeps growing
over successive interrupted runs, so the counts add up.

Opening checks everything first (writable, not in use, a journal, this graph's) so that
a bad journal is reported before any task runs, and removes blob files that no row
references (left by a run killed before its rows were committed).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from actorq._errors import GraphError
from actorq._graph.blobs import blob_name, store_for, sweep

FORMAT = "actorq-journal-2"
BLOB = 3  # the kind of a row whose result is in the blob store
MAX_QUEUED = 64  # rounds of rows handed to the writer and not yet written, at most
_DONE_SQL = "INSERT OR REPLACE INTO tasks VALUES (?, 'done', ?, ?, ?, NULL, ?)"
_FAILED_SQL = "INSERT OR REPLACE INTO tasks VALUES (?, 'failed', ?, 0, NULL, ?, ?)"
logger = logging.getLogger(__name__)


class Journal:
    """An open journal for one graph (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], digest: str, tasks: int) -> None:
        self.path = os.fspath(path)
        self.store = store_for(self.path)
        self._starts_fd = -1
        self._check_writable()
        self._lock_fd = self._lock()  # before reading anything: the holder may be writing
        try:
            self._db = self._open(digest, tasks)
        except BaseException:
            self._unlock()
            raise
        self._rows: list[tuple[bool, tuple[Any, ...]]] = []  # this round's, not handed over
        self._queue: queue.Queue[list[tuple[bool, tuple[Any, ...]]] | None] = queue.Queue(
            MAX_QUEUED)
        self._writer: threading.Thread | None = None
        self._stopping = False  # the writer was told to end (the sentinel is queued)
        self._writer_ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._closed = False
        self.error: BaseException | None = None  # why the writer failed
        self.committed = 0  # rows whose transaction committed (written by the writer)
        try:
            os.makedirs(self.store, exist_ok=True)
        except OSError as exc:
            self._db.close()
            self._unlock()
            msg = (f"journal {self.path!r}: its blob folder {self.store!r} cannot be "
                   f"created ({exc}); pass a journal path in a folder you can write to")
            raise GraphError(msg) from exc
        refs = self._db.execute(
            "SELECT result FROM tasks WHERE state = 'done' AND kind = ?", (BLOB,)).fetchall()
        sweep(self.store, {blob_name(ref) for (ref,) in refs})
        if self.unclean:
            logger.warning("journal %r: the run started %s did not end cleanly (killed?); "
                           "the tasks it finished without committing them run again",
                           self.path, self.unclean)
        try:
            if self.created:  # left by a journal that was deleted: not this one's
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.starts_path)
            self.prior = self._read_starts()
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('open', ?)",
                             (time.strftime("%Y-%m-%d %H:%M:%S"),))
        except (sqlite3.Error, OSError) as exc:
            self._db.close()
            self._unlock()
            msg = f"journal {self.path!r} cannot be written: {exc}"
            raise GraphError(msg) from exc

    # -- one run at a time ----------------------------------------------------------------

    @property
    def lock_path(self) -> str:
        """The file a run locks while it uses this journal."""
        return self.path + ".lock"

    @property
    def starts_path(self) -> str:
        """The file of task starts (attempts across an interruption)."""
        return self.path + ".starts"

    def _check_writable(self) -> None:
        path = self.path
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or (
                os.path.exists(path) and not os.access(path, os.W_OK)):
            msg = (f"journal {path!r} cannot be written (its folder {folder!r} is missing "
                   "or not writable); pass a path you can write to")
            raise GraphError(msg)

    def _lock(self) -> int:
        """Lock ``<journal>.lock`` for this run, or raise ``GraphError`` naming the run
        that holds it. The file of a run that just ended may be removed between our
        open and our lock: then we locked a file nobody else can see, so try again."""
        lock_path = self.lock_path
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                os.close(fd)
                pid = holder[0] if holder else "unknown"
                since = " ".join(holder[1:3]) if len(holder) >= 3 else "a moment ago"
                msg = (f"journal {self.path!r} is in use by another run that is still "
                       f"going (pid {pid}, started {since}): two runs cannot share one "
                       "journal at the same time; wait for that run to end, or pass "
                       "another journal path")
                raise GraphError(msg) from None
            except OSError as exc:  # no locks on this file system
                os.close(fd)
                msg = (f"journal {self.path!r} cannot be locked for this run ({exc}); "
                       "pass a journal path on a local file system")
                raise GraphError(msg) from exc
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        return fd

    def _unlock(self) -> None:
        """Let go of the lock (the file removed first, while still held: see _lock)."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd < 0:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.lock_path)
        os.close(fd)

    # -- attempts across an interruption --------------------------------------------------

    def _read_starts(self) -> Counter[str]:
        """Key -> attempts started by earlier runs that did not finish (empty if the
        last run finished every task: it removed the file)."""
        try:
            with open(self.starts_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return Counter()
        lines = data.split(b"\n")
        lines.pop()  # "" after the last newline, or a line cut short by a kill
        return Counter(line.decode("unicode_escape") for line in lines)

    def started(self, keys: Iterable[str]) -> None:
        """Record that attempts of these tasks start now: written before they are sent,
        so that a kill of the program right after still finds them on the next run."""
        data = b"".join(k.encode("unicode_escape") + b"\n" for k in keys)
        try:
            if self._starts_fd < 0:  # created by the first start, not by opening
                self._starts_fd = os.open(self.starts_path,
                                          os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._starts_fd, data)
        except OSError as exc:
            msg = f"journal {self.path!r}: its starts file cannot be written ({exc})"
            raise GraphError(msg) from exc

    def _open(self, digest: str, tasks: int) -> sqlite3.Connection:
        path = self.path
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            msg = f"journal {path!r} cannot be opened: {exc}"
            raise GraphError(msg) from exc
        try:
            tables = {t for (t,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
            if tables and "meta" not in tables:  # someone else's database: leave it be
                db.close()
                msg = (f"journal {path!r} is a SQLite database but not an actorq journal "
                       f"(its tables: {', '.join(sorted(tables))}); pass another path")
                raise GraphError(msg)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS tasks (key TEXT PRIMARY KEY, state TEXT, "
                       "attempts INTEGER, kind INTEGER, result BLOB, error BLOB, updated REAL)")
            meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
            self.unclean: str | None = meta.get("open")  # the last run did not end cleanly
            self.created = not meta  # a new journal: files beside it are not its own
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

    def done(self, key: str, attempts: int, kind: int, payload: Any) -> None:
        """Journal a finished task (handed to the writer at the next :meth:`commit`)."""
        self._rows.append((True, (key, attempts, kind, payload, time.time())))

    def failed(self, key: str, attempts: int, error: bytes) -> None:
        """Journal a task that failed for good (it runs again on the next run)."""
        self._rows.append((False, (key, attempts, error, time.time())))

    def commit(self) -> None:
        """End of a round: hand its rows to the writer (waits while ``MAX_QUEUED`` rounds
        are unwritten); raise ``GraphError`` if the writer failed."""
        if self.error is not None:
            msg = f"journal {self.path!r} could not be written: {self.error}"
            raise GraphError(msg) from self.error
        if not self._rows or self._stopping:
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                            name="actorq-graph-journal")
            self._writer.start()
        rows, self._rows = self._rows, []
        self._queue.put(rows)

    def drain(self) -> concurrent.futures.Future[None]:
        """Hand over the last rows and tell the writer to end; the future is set once it
        has written everything (``run_async`` awaits it instead of blocking in close)."""
        if not self._stopping:
            try:
                self.commit()
            except GraphError:
                pass  # close() reports it
            self._stopping = True
            if self._writer is None:
                self._writer_ended.set_result(None)
            else:
                self._queue.put(None)
        return self._writer_ended

    def _write_loop(self) -> None:
        try:
            self._write_all()
        finally:
            self._writer_ended.set_result(None)

    def _write_all(self) -> None:
        """The writer thread: everything queued, one transaction, until the sentinel."""
        db, get = self._db, self._queue.get
        while True:
            item = get()
            batches = [item]
            while item is not None:  # take what else is queued: one commit for all
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batches.append(item)
            rows = [r for b in batches if b is not None for r in b]
            if rows and self.error is None:
                try:
                    db.execute("BEGIN")
                    db.executemany(_DONE_SQL, [r for ok, r in rows if ok])
                    db.executemany(_FAILED_SQL, [r for ok, r in rows if not ok])
                    db.execute("COMMIT")
                    self.committed += len(rows)
                except Exception as exc:  # disk full, a removed file, a bad value
                    logger.error("journal %r: writing %d rows failed: %s", self.path,
                                 len(rows), exc)
                    self.error = exc
                    if db.in_transaction:
                        try:
                            db.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
            if batches[-1] is None:
                return

    def close(self, *, complete: bool = False) -> None:
        """Write what is left, stop the writer, mark the run ended, close; idempotent.
        *complete*: every task finished (done or failed), so the starts are forgotten.

        Raises ``GraphError`` if rows could not be written."""
        if self._closed:
            return
        self.drain()
        self._closed = True
        try:
            if self._writer is not None:
                self._writer.join()
            if self.error is None:
                if complete:  # every task done or failed: no attempt was cut off
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.starts_path)
                self._db.execute("DELETE FROM meta WHERE k = 'open'")
        except (sqlite3.Error, OSError) as exc:
            self.error = self.error or exc
        finally:
            if self._starts_fd >= 0:
                os.close(self._starts_fd)
                self._starts_fd = -1
            self._db.close()
            self._unlock()
        if self.error is not None:
            msg = f"journal {self.path!r} could not be written: {self.error}"
            raise GraphError(msg) from self.error
