"""`python -m harness.cli ...` for the tests at a fraction of its CPU: a fork server (one per test
process, started on first use) that imports the harness, torch and MLflow once and forks one child
per command. A fresh `python -m harness.cli run ...` spends about 5 CPU-seconds importing them and
loading what a run loads lazily (tests/crash_zygote.py's warm) before any work of its own; the
suite starts a hundred-odd of them.

    popen(argv, cwd=, env=, stdin=, stdout=, stderr=, text=, start_new_session=, drop_dac=) -> a Popen-like child
    run(argv, cwd=, env=, capture_output=, text=, timeout=, stdout=, stderr=, stdin=, drop_dac=) -> CompletedProcess

`drop_dac`: the child gives up CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH before the command runs,
as under `setpriv --bounding-set=-dac_override,-dac_read_search --inh-caps=-...` (file
permissions then apply to root too; tests/test_bad_inputs.py).

`argv` is what follows `python -m harness.cli`. The child is a process of its own (its pid takes
signals; a test may SIGKILL it), sees exactly `env` (with the variables the harness's own imports
set by default, as a fresh process's imports would), runs in `cwd` (first on sys.path, as `-m`
puts it), has the given stdin/stdout/stderr (pipes and files are passed to the server as file
descriptors), starts with SIGINT's default Python handler and SIGTERM's default action, and exits
as Python does: atexit handlers run, an escaping KeyboardInterrupt kills it with SIGINT.

What it cannot give, and where tests keep `subprocess` with a fresh interpreter: a command under a
prefix (taskset, prlimit; setpriv's dropped permission capabilities excepted: drop_dac), other OpenMP settings than the server's (libgomp reads OMP_* when torch
loads it: OMP_NUM_THREADS in a child's env has no effect here), a child that is a child of the
test's process (its parent is the server), and SIGINT ignored from the start (a background job).
Nothing here runs a torch op before forking, so no thread pool is inherited.

Server protocol (AF_UNIX SOCK_SEQPACKET, one connection per child): the client sends one JSON
message with stdin/stdout/stderr as SCM_RIGHTS fds, the server answers {"pid": n}, and when the
child ends {"rc": exit code or -signal}.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# --- the server ---------------------------------------------------------------------------------

def _child(req: dict, fds: list[int], close: list, set_by_import: dict) -> None:
    import harness.cli

    for s in close:  # the server's sockets and selector
        s.close()
    if req["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    if req.get("drop_dac"):
        _drop_dac()
    os.chdir(req["cwd"])
    sys.path[0] = req["cwd"]  # `python -m` puts its working folder first
    os.environ.clear()
    os.environ.update(req["env"])
    for k, v in set_by_import.items():
        os.environ.setdefault(k, v)
    sys.argv = [harness.cli.__file__, *req["argv"]]
    sys.modules["__main__"] = harness.cli  # what spawned workers (--jobs) import as their main, as under `-m harness.cli`
    if "multiprocessing.process" in sys.modules:
        sys.modules["multiprocessing.process"].ORIGINAL_DIR = req["cwd"]  # set at its import to the working folder
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    from harness.tracking import faults

    faults._step_clock()  # HARNESS_FAKE_CLOCK_STEP, read at import in a fresh process
    code, interrupted = 0, False
    try:
        harness.cli.main.main(args=req["argv"], prog_name="python -m harness.cli", standalone_mode=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        interrupted = True
    except BaseException:  # noqa: BLE001 - as Python prints an uncaught exception
        import traceback

        traceback.print_exc()
        code = 1
    try:
        import threading

        threading._shutdown()  # non-daemon threads are joined at exit, as Python does
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_dac() -> None:
    """What setpriv's NO_DAC prefix leaves a root process: the two capabilities out of the bounding
    and inheritable sets and, since no exec recomputes them here, out of the permitted and
    effective sets too (capset, _LINUX_CAPABILITY_VERSION_3)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    head, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(head), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    keep = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(head), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def serve(path: str) -> None:
    before = dict(os.environ)
    from tests.crash_zygote import warm  # imports the harness, torch and MLflow (mlflow.pytorch keeping the root logger)

    warm()
    set_by_import = {k: v for k, v in os.environ.items() if k not in before}
    gc.freeze()  # what the imports made stays out of the children's collections: fewer pages copied
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)  # EOF: the tests' process is done
    waiting: dict[int, socket.socket] = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        while True:
            for key, _ in sel.select(timeout=0.05):
                if key.fileobj is sys.stdin:
                    if not sys.stdin.readline():
                        return
                    continue
                conn, _ = listener.accept()
                msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                req = json.loads(msg)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    try:
                        _child(req, fds, [sel, listener, conn, *waiting.values()], set_by_import)
                    finally:
                        os._exit(98)
                for fd in fds:
                    os.close(fd)
                waiting[pid] = conn
                conn.send(json.dumps({"pid": pid}).encode())
            while waiting:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = waiting.pop(pid, None)
                if conn is not None:
                    try:
                        conn.send(json.dumps({"rc": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}).encode())
                    except OSError:
                        pass  # the test no longer waits
                    conn.close()
    finally:
        for pid in waiting:  # children their tests left running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- the client ---------------------------------------------------------------------------------

class _Server:
    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="harness-forkserver-")
        self.path = os.path.join(self.folder, "socket")
        # nothing of the test that first asks for it: its children get their own env
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "OMP_NUM_THREADS", "MLFLOW_TRACKING_"))}
        env.update(PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true")
        self.p = subprocess.Popen([sys.executable, "-m", "tests.forkserver", self.path], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.p.stdout.readline() == "ready\n", "the fork server did not start"
        self.pid = os.getpid()

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
        try:
            os.unlink(self.path)
            os.rmdir(self.folder)
        except OSError:
            pass


_server: _Server | None = None


def _the_server() -> _Server:
    global _server
    if _server is None or _server.pid != os.getpid() or _server.p.poll() is not None:
        _server = _Server()
        atexit.register(_server.close)
    return _server


def close() -> None:
    """Stop this process's fork server, if it started one (conftest, at the session's end)."""
    global _server
    if _server is not None and _server.pid == os.getpid():
        _server.close()
    _server = None


class Child:
    """The part of subprocess.Popen the tests use: pid, args, stdout/stderr (PIPE, STDOUT, DEVNULL,
    a file or fd, or inherited), poll, wait, communicate, send_signal/terminate/kill, returncode."""

    def __init__(self, argv, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False, start_new_session=False, drop_dac=False):
        self.args = [sys.executable, "-m", "harness.cli", *map(str, argv)]
        self.returncode = None
        self.stdout = self.stderr = None
        self._text = text
        theirs = []

        def fd_for(spec, default: int) -> int:
            if spec is None:
                return default
            if spec == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                theirs.append(fd)
                return fd
            if isinstance(spec, int) and spec >= 0:
                return spec
            return spec.fileno()

        def piped(spec, default: int):
            """(the child's fd, our end to read or None) for stdout or stderr."""
            if spec != subprocess.PIPE:
                return fd_for(spec, default), None
            r, w = os.pipe()
            theirs.append(w)
            return w, open(r, "r" if text else "rb")

        stdin_fd = fd_for(stdin, 0)
        out_fd, self.stdout = piped(stdout, 1)
        if stderr == subprocess.STDOUT:
            err_fd = out_fd
        else:
            err_fd, self.stderr = piped(stderr, 2)
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd or os.getcwd()), "env": dict(os.environ if env is None else env),
               "new_session": bool(start_new_session), "drop_dac": bool(drop_dac)}
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._sock.connect(_the_server().path)
            socket.send_fds(self._sock, [json.dumps(req).encode()], [stdin_fd, out_fd, err_fd])
            reply = self._sock.recv(1 << 16)
            assert reply, "the fork server died"
            self.pid = json.loads(reply)["pid"]
        finally:
            for fd in theirs:
                os.close(fd)

    def _rc(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self._sock.settimeout(timeout)
            try:
                msg = self._sock.recv(1 << 16)
            except (socket.timeout, BlockingIOError):
                return None
            assert msg, "the fork server died"
            self.returncode = json.loads(msg)["rc"]
            self._sock.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._rc(0)

    def wait(self, timeout: float | None = None) -> int:
        rc = self._rc(timeout)
        if rc is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return rc

    def communicate(self, input=None, timeout: float | None = None):
        assert input is None, "no input to a forked command"
        pipes = [f for f in (self.stdout, self.stderr) if f is not None]
        if len(pipes) == 1 and timeout is None:  # as subprocess does: what the file object has buffered is read too
            data = pipes[0].read()
            pipes[0].close()
            self.wait()
            return (data, None) if pipes[0] is self.stdout else (None, data)
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = {f: [] for f in (self.stdout, self.stderr) if f is not None}
        sel = selectors.DefaultSelector()
        for f in chunks:
            sel.register(f.fileno(), selectors.EVENT_READ, f)
        while sel.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            for key, _ in sel.select(left):
                data = os.read(key.fd, 1 << 16)
                if data:
                    chunks[key.data].append(data)
                else:
                    sel.unregister(key.fd)
        sel.close()
        outs = []
        for f in (self.stdout, self.stderr):
            if f is None:
                outs.append(None)
                continue
            data = b"".join(chunks[f])
            f.close()
            outs.append(data.decode().replace("\r\n", "\n").replace("\r", "\n") if self._text else data)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return tuple(outs)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in (self.stdout, self.stderr):
            if f is not None:
                f.close()
        self.wait()


def popen(argv, **kw) -> Child:
    return Child(argv, **kw)


def run(argv, cwd=None, env=None, capture_output=False, text=False, timeout=None, stdout=None, stderr=None, stdin=None,
        check=False, drop_dac=False) -> subprocess.CompletedProcess:
    if capture_output:
        stdout = stderr = subprocess.PIPE
    p = Child(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=text, drop_dac=drop_dac)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if check:
        r.check_returncode()
    return r


if __name__ == "__main__":
    serve(sys.argv[1])
