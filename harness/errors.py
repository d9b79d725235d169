"""One exception type for user-facing failures: the CLI prints its message as one line."""

import re

_DB_ERROR = re.compile(r"\((?:sqlite3|psycopg2?|pymysql|MySQLdb)[\w.]*\) ([^\n]+)")


def db_reason(e: BaseException) -> str | None:
    """The database's own words inside a wrapped SQLAlchemy/MLflow error, if any."""
    m = _DB_ERROR.search(str(e))
    return m.group(1).strip() if m else None


def one_line(e: BaseException) -> str:
    """A failure as one line: the database's reason where there is one, else type and first line."""
    db = db_reason(e)
    if db:
        return db
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip() and not ln.strip().startswith("(raised as a result of")]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class HarnessError(Exception):
    """A mistake in input or environment that the user can fix; never shown as a traceback.
    Its message is one line whatever it quotes (a file's bytes, a TOML key): line breaks are
    kept visible as \\n."""

    def __init__(self, message: object = ""):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class DivergedError(HarnessError):
    """Training produced a non-finite loss."""


class UsageError(HarnessError):
    """A command line that asks for something that does not exist (an unknown id, a device
    this machine lacks): exit code 2, click's convention for usage errors."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying one line on what it left behind (a run marked KILLED, or nothing)."""
