"""What every command shares: one line and a non-zero exit for a user's mistake, exit 130 for Ctrl-C,
subnormals flushed for the commands that train."""

from __future__ import annotations

import functools
import sys

import click

from ..errors import HarnessError

MAX_SEED = 2**31 - 1  # seeds feed torch, NumPy (< 2**32) and per-epoch generators (seed * 1_000_003 + epoch)


def fail(msg: str, code: int = 1):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def friendly(fn):
    """Turn HarnessError into one line; Ctrl-C into exit 130 with a hint."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HarnessError as e:
            fail(str(e), getattr(e, "exit_code", 1))
        except KeyboardInterrupt as e:
            # the runner says what the interrupt left behind (a run marked KILLED, or nothing yet)
            click.echo(f"\ninterrupted: {e}" if str(e) else "\ninterrupted: no run had been created yet; nothing was recorded", err=True)
            sys.exit(130)

    return wrapper


def flushes_denormals(fn):
    """A training command: subnormals as zero from before its first tensor (the catalogue builds
    networks), so PyTorch's pool threads, started by it, inherit the flag (training/environment.py)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..training.environment import flushing_denormals

        with flushing_denormals():
            return fn(*args, **kwargs)

    return wrapper
