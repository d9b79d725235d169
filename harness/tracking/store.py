"""Which tracking store a URI names, and getting a usable connection to it.

A new SQLite store is built all-or-nothing: MLflow creates its schema in some thirty steps,
and a process killed in the middle used to leave a store that every later command refused
("table latest_metrics already exists"). Here the schema is built under a temporary name
and renamed into place, so `mlflow.db` is either absent or complete; a store already broken
that way is named with the command that recovers it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from ..errors import HarnessError, db_reason, one_line
from .guards import sigint_deferred

DEFAULT_EXPERIMENT = "cifar10-harness"
DEFAULT_URI = "sqlite:///mlflow.db"

_DRIVERS = {"psycopg": 'pip install "psycopg[binary]"', "psycopg2": 'pip install "psycopg[binary]"',
            "pymysql": "pip install pymysql", "MySQLdb": "pip install pymysql"}


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def redact(uri: str) -> str:
    """The URI without its password, for messages and tags."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?")[0]).expanduser()


def absolute_uri(uri: str) -> str:
    """The URI with a SQLite file's path made absolute (for processes in other folders)."""
    db = sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None and not db.is_absolute() else uri


def describe(e: BaseException) -> str:
    """One line for a store error: the database's own words where MLflow wrapped them
    (SQLAlchemy's "(sqlite3.OperationalError) attempt to write a readonly database"),
    and the install command where a database driver is missing."""
    text = str(e)
    missing = re.search(r"No module named '([\w.]+)'", text)
    if missing and missing.group(1).split(".")[0] in _DRIVERS:
        return f"its database driver is not installed ({missing.group(0)}): {_DRIVERS[missing.group(1).split('.')[0]]}"
    return db_reason(e) or one_line(e)


def check_reachable(uri: str, must_exist: bool) -> None:
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise HarnessError(f"tracking server {redact(uri)} unreachable ({getattr(e, 'reason', e)})") from None
        return
    db = sqlite_path(uri)
    if db is None:
        return
    if must_exist and not db.exists():
        raise HarnessError(f"no run store at {db}; run `harness run-all` first or pass --tracking-uri")
    if not db.parent.is_dir():
        raise HarnessError(f"tracking store {uri}: folder {db.parent} does not exist")


# --------------------------------------------------------------------------- SQLite files


def _tables(db: Path) -> tuple[set[str], int | None, int | None]:
    """(table names, rows in alembic_version, rows in runs) of an existing SQLite file, read-only.

    A writer SIGKILLed mid-transaction (its cache spilled, or mid-commit) leaves a hot journal
    (`mlflow.db-journal`) that the next connection must roll back before it reads; a read-only
    connection cannot, and SQLite says "attempt to write a readonly database"
    (SQLITE_READONLY_ROLLBACK). The store is then opened read-write, which rolls the journal back
    as the store's next writer would have done anyway; only a store nobody may write stays refused."""
    try:
        return _read_tables(db, "ro")
    except sqlite3.OperationalError as e:
        if getattr(e, "sqlite_errorname", "") != "SQLITE_READONLY_ROLLBACK":
            raise HarnessError(f"tracking store {db} is not an SQLite database ({e}); pass another --tracking-uri or move it aside") from None
    if not (os.access(db, os.W_OK) and os.access(db.parent, os.W_OK)):
        raise HarnessError(f"tracking store {db}: a process killed while writing left its journal ({db.name}-journal), which only a "
                           "process that may write the store can roll back; run once where the store is writable")
    try:
        return _read_tables(db, "rw")
    except sqlite3.DatabaseError as e:
        raise HarnessError(f"tracking store {db} is not an SQLite database ({e}); pass another --tracking-uri or move it aside") from None


def _read_tables(db: Path, mode: str) -> tuple[set[str], int | None, int | None]:
    try:
        con = sqlite3.connect(f"file:{db}?mode={mode}", uri=True, timeout=30)
    except sqlite3.Error as e:
        raise HarnessError(f"tracking store {db}: cannot open ({e})") from None
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] if "alembic_version" in names else None
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in names else None
        return names, version, runs
    except sqlite3.OperationalError:
        raise  # the caller tells a journal to roll back from a file that is no database
    except sqlite3.DatabaseError as e:
        raise HarnessError(f"tracking store {db} is not an SQLite database ({e}); pass another --tracking-uri or move it aside") from None
    finally:
        con.close()


def broken_store_message(db: Path, runs: int | None, detail: str) -> str:
    if not runs:
        fix = f"it holds no runs: delete it (rm {db}) and run again"
    else:
        fix = f"restore it from a backup, or move it aside (mv {db} {db}.broken) to start a new store"
    return f"tracking store {db} is incomplete ({detail}; its creation was interrupted); {fix}"


def _check_sqlite(db: Path, writing: bool) -> bool:
    """Whether the store must be created; raises for a broken or (when writing) read-only one."""
    if not db.exists() or db.stat().st_size == 0:
        if writing and not os.access(db.parent, os.W_OK):
            raise HarnessError(f"tracking store {db}: cannot create it, folder {db.parent} is read-only")
        return True
    names, version, runs = _tables(db)
    if not names:
        return True  # an empty database file: nothing to lose
    if not version:
        raise HarnessError(broken_store_message(db, runs, f"{len(names)} tables and no schema version"))
    if writing:
        if not os.access(db, os.W_OK):
            raise HarnessError(f"tracking store {db} is read-only (the file cannot be written); use a writable store or --tracking-uri")
        if not os.access(db.parent, os.W_OK):
            raise HarnessError(f"tracking store {db}: its folder {db.parent} is read-only (SQLite needs it for its journal)")
    return False


def _build_schema(tmp: Path) -> None:
    """MLflow's own schema and migrations (the ones its store runs on first use), on a connection
    that does not wait for the disk after each of its thirty-odd steps: the file is a temporary one
    that only becomes the store once complete and synced, so a crash mid-way loses nothing. 4-6 s
    of waiting on a disk's syncs became about 1 s here. On an MLflow without this helper, its
    store builds the schema itself (as before)."""
    try:
        import sqlalchemy
        from mlflow.store.db.utils import _initialize_tables
    except ImportError:
        return
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_sync(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA synchronous=OFF")

    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_sqlite(db: Path) -> None:
    """Build the schema under a temporary name, then rename: all or nothing."""
    for stale in db.parent.glob(f".{db.name}.creating-*"):  # a creator killed earlier (we hold the lock)
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
    try:
        _build_schema(tmp)
        client = MlflowClient(f"sqlite:///{tmp}")
        client.search_experiments(max_results=1)  # MLflow migrates the schema here if _build_schema did not, and adds its Default experiment
        client._tracking_client.store.engine.dispose()
        _fsync(tmp)  # durable before it takes the store's name
        os.replace(tmp, db)
        try:  # the rename made durable where the filesystem allows it (as SQLite does, best effort:
            _fsync(db.parent)  # SMB, WSL's drvfs and FUSE mounts refuse a directory's fsync; an
        except OSError:  # unreadable folder cannot be opened): the store is complete and in place
            pass
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def init_lock(uri: str):
    """Serialise first use of a SQLite store: two processes creating or migrating one schema
    at once collide ("duplicate column"). Other stores look after themselves."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        fd = os.open(f"{db}.init-lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:  # a read-only folder: nobody can create or migrate a store there anyway
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def prepare(uri: str, writing: bool) -> None:
    """Called under init_lock: a SQLite store is checked (broken, read-only) and, when it
    does not exist yet and we are going to write, created all-or-nothing."""
    db = sqlite_path(uri)
    if db is None:
        return
    try:
        if _check_sqlite(db, writing) and writing:
            # Ctrl-C waits the second or two this takes: SQLAlchemy's garbage-collection
            # callbacks, which run here, swallow an interrupt that lands in them
            with sigint_deferred():
                _create_sqlite(db)
    except OSError as e:
        raise HarnessError(f"tracking store {db}: {e.strerror or type(e).__name__}") from None


def artifact_location(uri: str, experiment_name: str) -> str | None:
    """Artifacts of a SQLite store go beside its database (mlflow.db + mlruns/ together),
    not into whatever directory the process happens to run in."""
    db = sqlite_path(uri)
    if db is None:
        return None  # servers and other stores choose their own
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_name)
    return str(db.absolute().parent / "mlruns" / safe)
