"""``<runtime> exec`` (runc, or the runtime the container was created with): running
another process in a running container.

The process spec starts from the container's own (``config.json``: env,
capabilities, user, cwd, rlimits, no_new_privileges) and takes the exec's
arguments, extra environment, user and working directory. Four modes:

- captured: stdout and stderr are collected and returned (``lamina exec`` in
  scripts, healthchecks, tests);
- stream: the caller's stdio (fds 0, 1, 2 or the given stdin) are handed to the
  process as they are; or, with an ``ExecSink`` (the daemon's client), its output
  is read from pipes and handed to the sink as it comes, its stdin is the sink's,
  and a sink whose reader has gone gets the process killed;
- tty: runc makes the container's pseudo-terminal and proxies it to its own stdio,
  a pty lamina opens; lamina pumps that to the caller's terminal (in raw mode) or
  collects it, and forwards window size changes (SIGWINCH -> TIOCSWINSZ on its
  master, then SIGWINCH to runc, which resizes the container's terminal); the detach
  keys typed there (``DetachKeys``) leave it running: in-process, its terminal is
  then read to its end by a ``cat`` of its own (the container's pty must not fill
  and block it, nor close and hang it up), through a sink the relay drops its output;
- detach: returns once the process has started; it runs under a conmon of its own
  (``conmon --exec``), which reaps it when it exits: with a bare ``runc exec
  --detach`` it would be orphaned to the host's init, and a zombie there keeps the
  container's cgroup busy.

runc reports failures to start the process (command not found, bad cwd) in its
``--log`` file; those become a LaminaError whose ``exit_code`` is Docker's
(``exec_exit_code``: 127 not found, 126 for anything else that kept it from
starting). runc also prints that error on its own stderr, which the process shares
(stream mode) or which is the pty (tty mode): that line is held back
(``HoldRuntimeError``) and dropped when the exec failed, so the error is printed once,
by lamina. In stream mode stderr is therefore relayed through a pipe (stdin and
stdout stay the caller's own); like ``docker exec``, the relay ends when every holder
of that stderr has closed it. The process's own exit status is returned, 128+N when
signal N killed it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from lamina.runtime._conmon import OciBinary, launch_exec, runc_error_text
from lamina.runtime._term import (
    DetachKeys,
    follow_window_size,
    raw_terminal,
    set_window_size,
    window_size,
)
from lamina.runtime._types import ExecResult, ExecSink
from lamina.runtime.common import StartFailed, exec_failed, merge_env


def build_process(
    container_process: dict[str, Any],
    argv: list[str],
    *,
    env: list[str] | None,
    user: dict[str, Any] | None,
    workdir: str | None,
    tty: bool,
) -> dict[str, Any]:
    proc: dict[str, Any] = json.loads(json.dumps(container_process))  # deep copy
    proc["args"] = list(argv)
    proc["terminal"] = tty
    proc.pop("consoleSize", None)
    proc["env"] = merge_env(list(proc.get("env") or []), list(env or []))
    if tty and not any(e.startswith("TERM=") for e in proc["env"]):
        proc["env"].append("TERM=xterm")
    if user is not None:
        proc["user"] = user
    if workdir:
        proc["cwd"] = workdir
    return proc


class _Exec:
    """One ``<runtime> exec`` invocation: the process file and the runtime's log file."""

    def __init__(self, runtime: OciBinary, cid: str, bundle: Path, process: dict[str, Any]) -> None:
        self.runtime = runtime
        self.cid = cid
        self.command = str((process.get("args") or [""])[0])
        tag = os.urandom(6).hex()
        self.process_file = bundle / f"exec-{tag}.json"
        self.log_file = bundle / f"exec-{tag}.log"
        self.pid_file = bundle / f"exec-{tag}.pid"  # a bounded exec's process
        with open(self.process_file, "w") as f:
            json.dump(process, f)

    def argv(self, *extra: str) -> list[str]:
        return [
            self.runtime.path,
            "--root", str(self.runtime.state_root),
            "--log", str(self.log_file),
            "--log-format", "json",
            "exec", "--process", str(self.process_file),
            *extra,
            self.cid,
        ]  # fmt: skip

    def failure(self) -> StartFailed | None:
        """runc's own error, if it logged one (the process never started)."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return None
        msgs = []
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("level") in ("error", "fatal"):
                    msgs.append(str(entry.get("msg", "")))
        if not msgs:
            return None
        text = runc_error_text(msgs[-1]) if "msg=" in msgs[-1] else msgs[-1]
        return exec_failed(text, self.command)

    def close(self) -> None:
        for p in (self.process_file, self.log_file, self.pid_file):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class HoldRuntimeError:
    """Passes output through, except a last line that starts as the OCI runtime's own
    ``exec failed: ...`` message: that line is held until more output shows it was the
    process's (``feed`` returns it then), and ``end`` drops it when the exec failed
    (lamina reports that error itself) or returns it when it did not."""

    MARK = b"exec failed:"

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        buf = self.held + data
        start = buf.rfind(b"\n", 0, max(len(buf) - 1, 0)) + 1  # the last line's start
        last = buf[start:]
        if last.startswith(self.MARK) or (b"\n" not in last and self.MARK.startswith(last)):
            self.held = last
            return buf[:start]
        self.held = b""
        return buf

    def end(self, failed: bool) -> bytes:
        held, self.held = self.held, b""
        return b"" if failed else held


def run_exec(
    runtime: OciBinary,
    cid: str,
    bundle: Path,
    process: dict[str, Any],
    *,
    stdin: BinaryIO | None = None,
    detach: bool = False,
    stream: bool = False,
    name: str = "",
    timeout: float | None = None,
    output_limit: int | None = None,
    sink: ExecSink | None = None,
    detach_keys: bytes | None = None,
) -> ExecResult:
    """Run the process; see the module docstring for the modes. ``detach_keys``: a
    terminal's (None: Docker's ctrl-p ctrl-q)."""
    ex = _Exec(runtime, cid, bundle, process)
    try:
        if (timeout is not None or output_limit is not None) and not (detach or stream or sink):
            return _run_bounded(ex, timeout, output_limit)
        if process.get("terminal") and not detach:
            return _run_tty(ex, stdin=stdin, stream=stream, sink=sink, detach_keys=detach_keys)
        if sink is not None and not detach:
            return ExecResult(_run_relayed(ex, sink), b"", b"")
        if detach:
            try:
                launch_exec(
                    cid=cid,
                    name=name or cid[:12],
                    exec_dir=bundle / f"exec-{os.urandom(8).hex()}",
                    process_file=ex.process_file,
                    runtime=runtime,
                )
            except StartFailed as e:
                raise exec_failed(str(e), ex.command) from None
            return ExecResult(0, b"", b"")
        if stream:
            return ExecResult(_run_streamed(ex, stdin), b"", b"")
        proc3 = subprocess.run(ex.argv(), capture_output=True, **_stdin_args(stdin, inherit=False))
        failed = ex.failure()
        if failed is not None:
            raise failed
        return ExecResult(proc3.returncode, proc3.stdout, proc3.stderr)
    finally:
        ex.close()


def _run_bounded(ex: _Exec, timeout: float | None, limit: int | None) -> ExecResult:
    """Captured, for checks: stdout and stderr on one pipe (in the order written), the
    first ``limit`` bytes kept; after ``timeout`` seconds the process and what it
    started are killed. It ends when runc does (the process's exit): a child left in
    the background holding the pipe does not hold the caller."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            ex.argv("--pid-file", str(ex.pid_file)),
            stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end,
        )  # fmt: skip
    finally:
        os.close(write_end)
    kept = bytearray()
    truncated = timed_out = False

    def keep(data: bytes) -> None:
        nonlocal truncated
        room = len(data) if limit is None else max(limit - len(kept), 0)
        kept.extend(data[:room])
        truncated = truncated or len(data) > room

    deadline = None if timeout is None else time.monotonic() + timeout
    exited = os.pidfd_open(proc.pid)
    watched = [read_end, exited]
    try:
        while True:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, _, _ = select.select(watched, [], [], wait)
            if not ready:
                timed_out, deadline = True, None
                _kill_exec(ex.pid_file, proc)
                continue
            if exited in ready:
                os.set_blocking(read_end, False)
                with contextlib.suppress(BlockingIOError):
                    while data := os.read(read_end, 65536):
                        keep(data)
                break
            data = os.read(read_end, 65536)
            if data:
                keep(data)
            else:  # closed by the process: wait for its end alone
                watched = [exited]
    finally:
        os.close(read_end)
        os.close(exited)
        code = proc.wait()
    failed = ex.failure()
    if failed is not None and not timed_out:
        raise failed
    return ExecResult(-1 if timed_out else code, bytes(kept), b"", timed_out=timed_out,
                      truncated=truncated)  # fmt: skip


def _kill_exec(pid_file: Path, runc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the exec's process (runc's child: checked, so that no reused pid is hit)
    and every process under it, all stopped first so that none forks away meanwhile."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    tree = _tree(pid) if pid and _parent(pid) == runc.pid else []
    if not tree:  # not started yet (or runc is stuck): runc itself
        with contextlib.suppress(OSError):
            runc.kill()
        return
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for p in tree if sig == signal.SIGSTOP else _tree(pid) or tree:
            with contextlib.suppress(OSError):
                os.kill(p, sig)


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            children.setdefault(_parent(int(name)), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _run_streamed(ex: _Exec, stdin: BinaryIO | None) -> int:
    """The exec with the caller's stdin (or ``stdin``) and stdout, its stderr relayed to
    ours through ``HoldRuntimeError``; the exit code, or the exec's one error."""
    args = _stdin_args(stdin, inherit=True)
    data = args.pop("input", None)
    proc = subprocess.Popen(
        ex.argv(),
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE if data is not None else args.get("stdin"),
    )
    assert proc.stderr is not None
    feeder = None
    if data is not None:
        feeder = threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True)
        feeder.start()
    hold = HoldRuntimeError()
    err_fd = proc.stderr.fileno()
    try:
        while chunk := os.read(err_fd, 65536):
            _write_all(2, hold.feed(chunk))
    except BaseException:  # ^C: as subprocess.run, end runc (the process goes on)
        proc.kill()
        raise
    finally:
        proc.stderr.close()
        code = proc.wait()
    if feeder is not None:
        feeder.join()
    failed = ex.failure()
    _write_all(2, hold.end(failed is not None))
    if failed is not None:
        raise failed
    return code


def _run_relayed(ex: _Exec, sink: ExecSink) -> int:
    """The exec with the sink's stdin, its stdout and stderr read from pipes and handed
    to the sink as they come (runc's own error line held back, as in stream mode).
    A sink that has gone (a write fails, or ``gone()`` while silent) gets the process
    killed; the relay ends when every holder of the pipes has closed them."""
    pipes: dict[int, int] = {}  # read end -> stream
    writers = []
    for stream in (1, 2):
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pipes[read_end] = stream
        writers.append(write_end)
    try:
        proc = subprocess.Popen(
            ex.argv("--pid-file", str(ex.pid_file)),
            stdin=sink.stdin_fd if sink.stdin_fd is not None else subprocess.DEVNULL,
            stdout=writers[0], stderr=writers[1],
        )  # fmt: skip
    except BaseException:
        for fd in pipes:
            os.close(fd)
        raise
    finally:
        for fd in writers:
            os.close(fd)
    hold = HoldRuntimeError()
    relay = _SinkRelay(sink, lambda: _kill_exec(ex.pid_file, proc))
    try:
        while pipes:
            ready, _, _ = select.select(list(pipes), [], [], 1.0)
            if not ready:
                relay.check()
            for fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    del pipes[fd]
                    os.close(fd)
                elif pipes[fd] == 2:
                    relay.write(2, hold.feed(data))
                else:
                    relay.write(1, data)
    except BaseException:
        proc.kill()
        raise
    finally:
        for fd in pipes:
            os.close(fd)
        code = proc.wait()
    failed = ex.failure()
    relay.write(2, hold.end(failed is not None))
    if failed is not None:
        raise failed
    return code


class _SinkRelay:
    """Writes to an ``ExecSink`` until its reader has gone, then ``kill`` (once)."""

    def __init__(self, sink: ExecSink, kill: Callable[[], None]) -> None:
        self.sink, self._kill, self.gone = sink, kill, False

    def write(self, stream: int, data: bytes) -> None:
        if data and not self.gone:
            try:
                self.sink.write(stream, data)
            except OSError:
                self._end()

    def check(self) -> None:
        if not self.gone and self.sink.gone():
            self._end()

    def _end(self) -> None:
        self.gone = True
        self._kill()


def _feed(pipe: Any, data: bytes) -> None:
    with contextlib.suppress(OSError):
        pipe.write(data)
    with contextlib.suppress(OSError):
        pipe.close()


def _stdin_args(stdin: BinaryIO | None, *, inherit: bool) -> dict[str, Any]:
    """subprocess arguments feeding ``stdin`` to the process: a real file is passed on,
    any other stream is read and piped in; None inherits ours or gives /dev/null."""
    if stdin is None:
        return {"stdin": None if inherit else subprocess.DEVNULL}
    if _has_fileno(stdin):
        return {"stdin": stdin}
    return {"input": stdin.read()}


def _has_fileno(f: object) -> bool:
    try:
        f.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return True


# -- tty ---------------------------------------------------------------------------


def _run_tty(
    ex: _Exec,
    *,
    stdin: BinaryIO | None,
    stream: bool,
    sink: ExecSink | None = None,
    detach_keys: bytes | None = None,
) -> ExecResult:
    # runc 1.1 hands out the pty master (--console-socket) only with --detach, which
    # would lose the exit status. Without it, runc proxies between the container's pty
    # and its own stdio when that is a terminal: give it one of ours and pump our side.
    # runc sets that terminal raw and, on SIGWINCH, copies its size to the container.
    master, slave = os.openpty()
    proc: subprocess.Popen[bytes] | None = None
    left_running = False  # detached in-process: runc is not waited for
    try:
        in_fd: int | None
        if sink is not None:
            in_fd = sink.stdin_fd
        elif stdin is not None and _has_fileno(stdin):
            in_fd = stdin.fileno()
        elif stream and stdin is None and _has_fileno(sys.stdin):
            in_fd = sys.stdin.fileno()
        else:
            in_fd = None
        term_fd = in_fd if in_fd is not None and os.isatty(in_fd) else None
        size = window_size(term_fd) if term_fd is not None else None
        rows, cols = size or (sink.size if sink is not None else None) or (24, 80)
        set_window_size(slave, rows, cols)
        # Raw from the start: runc's own raw mode comes late or not at all, and this
        # terminal's output processing would turn the container's \r\n into \r\r\n.
        import tty as ttymod

        ttymod.setraw(slave)
        proc = subprocess.Popen(
            ex.argv("--pid-file", str(ex.pid_file)),
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        runc = proc

        def on_resize(r: int, c: int) -> None:
            set_window_size(master, r, c)
            with contextlib.suppress(OSError):
                runc.send_signal(signal.SIGWINCH)

        captured = bytearray()
        relay = None
        write: Callable[[bytes], Any]
        if sink is not None:
            relay = _SinkRelay(sink, lambda: _kill_exec(ex.pid_file, runc))
            sink.resize = on_resize
            write = functools.partial(relay.write, 1)
        elif stream:
            write = functools.partial(_write_all, sys.stdout.fileno())
        else:
            write = captured.extend
        hold = HoldRuntimeError()  # runc's error comes through the terminal too
        watch = DetachKeys(detach_keys) if in_fd is not None else None
        with contextlib.ExitStack() as stack:
            if term_fd is not None:
                stack.enter_context(raw_terminal(term_fd))
                stack.enter_context(follow_window_size(term_fd, on_resize))
            pump_pty(master, in_fd, write, hold, idle=relay.check if relay else None,
                     watch=watch)  # fmt: skip
            if watch is not None and watch.detached:
                if sink is None:
                    _drain_in_background(master)
                    left_running = True
                    return ExecResult(0, b"", b"", detached=True)
                sink.resize = None
                if sink.detached is not None:
                    sink.detached()
                pump_pty(master, None, lambda _data: None)  # to the exec's end, dropped
            code = proc.wait()
            if sink is not None:
                sink.resize = None
            failed = ex.failure()
            write(hold.end(failed is not None))  # still raw: written as it came
        if failed is not None:
            raise failed
        return ExecResult(code, bytes(captured), b"")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
        if proc is not None and not left_running and proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def pump_pty(
    master: int,
    in_fd: int | None,
    write: Callable[[bytes], Any],
    hold: HoldRuntimeError | None = None,
    *,
    idle: Callable[[], None] | None = None,
    watch: DetachKeys | None = None,
) -> None:
    """Copy ``in_fd`` -> master and master -> ``write``, through ``hold`` when given,
    until the pty closes (EIO once every process holding the slave has exited) or
    ``watch`` sees the detach keys in the input (``watch.detached``, nothing of the
    output written after them); ``idle`` is called after each second without traffic."""
    reading_in = in_fd is not None
    while True:
        fds = [master] + ([in_fd] if reading_in and in_fd is not None else [])
        try:
            ready, _, _ = select.select(fds, [], [], None if idle is None else 1.0)
        except InterruptedError:
            continue
        if not ready and idle is not None:
            idle()
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError as e:
                if e.errno == errno.EIO:
                    return
                raise
            if not data:
                return
            if hold is not None:
                data = hold.feed(data)
            if data:
                write(data)
        if in_fd is not None and in_fd in ready:
            data = os.read(in_fd, 65536)
            if not data:
                reading_in = False  # a terminal has no "closed stdin": stop forwarding
                data = watch.flush() if watch is not None else b""
            elif watch is not None:
                data = watch.feed(data)
            _write_all(master, data)
            if watch is not None and watch.detached:
                return


def _drain_in_background(master: int) -> None:
    """Read the pty of a detached exec to its end (the exec's exit) in a process of
    its own, which outlives ours: its output is dropped, as Docker's is."""
    subprocess.Popen(["cat"], stdin=master, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        view = view[n:]
