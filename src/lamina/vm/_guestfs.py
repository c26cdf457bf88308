"""Container operations on a running micro-VM: pause, top, cp, diff and commit.

A VM container's filesystem lives in the guest: the image's read-only EROFS at
``/lower`` (a VM base disk at ``/base`` below it), a tmpfs at ``/rw`` with the
overlay's ``upper`` dir, and the merged root at ``/newroot``. Nothing of it is on the
host, so each operation runs the initramfs's static busybox in the guest through the
VM's supervisor (``<root>/vms/<id>/ctl.sock``, the agent protocol: an EXEC on any
session but the workload's gets a fresh guest session) and reads its output:

- ``ToolRun`` runs one tool: ``where="tool"`` chrooted into the container (paths
  resolve as the container sees them, symlinks included), ``where="host"`` in the
  agent's own root (where ``/rw/upper`` and ``/lower`` are). Its stdout streams in
  frames of at most 1 MiB; stdin is fed from a file in chunks while output is read.
- ``stat_path`` / ``copy_out`` / ``copy_in``: busybox stat and tar in the container's
  view, the conventions and error lines of ``lamina.runtime._fsops`` (which the CLI
  relies on); ``copy_out -L`` renames the target's top entry after the link here.
  The VM is the boundary: a hostile archive or symlink can at worst write elsewhere
  in the guest, never on the host.
- ``upper_listing`` lists the overlay's upper dir in one guest command: every entry
  with its kind (directory, whiteout, other), whether the image has that path, the
  directories that hide the image's (overlay *opaque* dirs, found by comparing the
  image's names with the merged view, as busybox has no getfattr) and the image's
  names they hide. ``diff`` turns it into ``docker diff`` lines with the rules of
  ``_fsops.diff``; ``commit`` tars the upper dir, unpacks it on the host in overlay
  form (char 0/0 whiteouts, opaque xattrs) and hands it to ``_fsops.commit_image``,
  so the image is made exactly as for process containers.
- The agent's own files (``/etc/hostname``, ``/etc/hosts``, ``/etc/resolv.conf``,
  written in the overlay at boot) are never changes of the container, as the
  bind-mounted ones of a process container are not; nor are the mount point stubs
  ``/proc``, ``/sys`` and ``/dev`` when the image lacks them.
- ``freeze`` / ``thaw``: ``commit --pause`` stops the container's processes with a
  cgroup v2 freezer in the guest while the tar runs (stopping the whole VM would
  stop the tar too).
- ``signal_vmm``: ``pause`` stops the VM as a whole (SIGSTOP to QEMU), ``unpause``
  and anything that must reach the guest of a paused container continue it.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shutil
import signal
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina.errors import LaminaError
from lamina.runtime._ps import ps_ef_row
from lamina.vm._agent import STDIN_CHUNK, AgentConnection, Msg, exec_payload, parse_exit

if TYPE_CHECKING:
    from lamina.runtime._types import PathStat

SESSION = 2  # any session but the workload's (1) is relayed to a fresh guest session
_TOOL_ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
_STDIN_BUFFERED = 4 << 20  # stop reading stdin while this much waits to be sent
# Written by the agent into the overlay at boot: the VM's bind-mounted files.
AGENT_FILES = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})
# Mount points the agent creates when the image lacks them.
MOUNT_STUBS = frozenset({"/proc", "/sys", "/dev"})
_OPAQUE_XATTR = "trusted.overlay.opaque"


# -- running a tool in the guest -----------------------------------------------------


class ToolRun:
    """One busybox command in the guest; ``output()`` yields its stdout as it comes.

    ``exit_code`` and ``stderr`` are set once the output is exhausted. A process that
    cannot start, or a VM that stops meanwhile, raises a LaminaError."""

    def __init__(
        self,
        conn: AgentConnection,
        argv: list[str],
        *,
        where: str,
        stdin: BinaryIO | None = None,
        label: str = "the file tool",
    ) -> None:
        self.conn = conn
        self.label = label
        self.stdin = stdin
        self.exit_code: int | None = None
        self.stderr = bytearray()
        self._error: str | None = None
        env = _TOOL_ENV if where == "tool" else ["PATH=/bin"]
        payload = exec_payload(argv, env, cwd="/", stdin=stdin is not None, where=where)
        conn.send(Msg.EXEC, SESSION, payload)

    def _feed(self) -> None:
        """Queue stdin chunks while little is waiting to be sent."""
        while self.stdin is not None and self.conn.pending < _STDIN_BUFFERED:
            chunk = self.stdin.read(STDIN_CHUNK)
            self.conn.send(Msg.STDIN, SESSION, chunk)  # b"" closes the tool's stdin
            if not chunk:
                self.stdin = None

    def output(self) -> Iterator[bytes]:
        while True:
            self._feed()
            for f in self.conn.poll(1.0):
                if f.session != SESSION:
                    continue
                if f.type == Msg.STDOUT:
                    yield f.payload
                elif f.type == Msg.STDERR:
                    self.stderr += f.payload
                elif f.type == Msg.ERROR:
                    self._error = f.payload.decode(errors="replace")
                elif f.type == Msg.EXIT:
                    if self._error is not None:
                        raise LaminaError(
                            "the VM's file tools (the host's static busybox, package "
                            f"busybox-static, in its initramfs) could not run: {self._error}"
                        )
                    self.exit_code = parse_exit(f.payload).exit_code
                    return
            if self.conn.closed:
                raise LaminaError("the container stopped before the operation finished")

    def run(self) -> bytes:
        """All of stdout; a non-zero exit raises with the tool's last stderr line."""
        out = b"".join(self.output())
        if self.exit_code != 0:
            raise LaminaError(f"{self.label} failed in the guest: {self.last_error()}")
        return out

    def last_error(self) -> str:
        lines = [x for x in self.stderr.decode(errors="replace").splitlines() if x.strip()]
        return lines[-1] if lines else f"exit status {self.exit_code}"


def _sh(script: str, *args: str) -> list[str]:
    return ["sh", "-c", script, "sh", *args]


def _host_sh(script: str, *args: str) -> list[str]:
    return ["/bin/busybox", "sh", "-c", script, "sh", *args]


def require_guest(status: str, cid: str, what: str) -> None:
    """Refuse an operation that needs the guest unless the VM is running (a paused
    VM runs nothing; a stopped one has no writable layer: it lived in the guest)."""
    if status == "paused":
        raise LaminaError(f"cannot {what} container {cid[:12]}: it is paused; unpause it first")
    if status != "running":
        raise LaminaError(
            f"cannot {what} container {cid[:12]}: it is not running (a micro-VM container's "
            "files live in its guest while it runs)"
        )


# -- pause -----------------------------------------------------------------------------


def signal_vmm(vmdir: Path, signum: signal.Signals) -> bool:
    """Send ``signum`` to the VM's QEMU (``vmdir/qemu.pid``); False when it is gone."""
    try:
        pid = int((vmdir / "qemu.pid").read_text())
        if b"qemu" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return False
        os.kill(pid, signum)
    except (OSError, ValueError):
        return False
    return True


def vmm_cpu_ns(pid: int) -> int:
    """CPU time QEMU (every vCPU and I/O thread) has used, in ns."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


# -- top -------------------------------------------------------------------------------

# Every process whose root is the container's (``-ef``: same inode; the agent, kernel
# threads and host-side tools have the initramfs as root) and that is not one of the
# agent's busybox tools chrooted there. Each is printed after a random separator, with
# its uid, /proc/PID/stat line and NUL-separated cmdline: shell builtins and NOFORK
# applets only, as every fork costs under TCG.
_TOP_SCRIPT = r"""
t=$1
while read -r k v; do [ "$k" = btime ] && echo "$v"; done < /proc/stat
read -r up _ < /proc/uptime; echo "$up"
cd /proc || exit 1
for p in [0-9]*; do
  [ "$p/root" -ef /newroot ] || continue
  [ "$p/exe" -ef /bin/busybox ] && continue
  u=
  while read -r k v _; do [ "$k" = Uid: ] && u=$v && break; done < "$p/status" 2>/dev/null
  read -r s < "$p/stat" 2>/dev/null || continue
  printf '%s %s %s\n' "$t" "$u" "$s"
  cat "$p/cmdline" 2>/dev/null
  printf '\n'
done
"""
_GUEST_HZ = 100  # USER_HZ: what /proc/PID/stat counts in on x86 Linux


def top(conn: AgentConnection) -> list[list[str]]:
    """``ps -ef`` rows of the container's processes, as the process backend's top."""
    token = secrets.token_hex(8)
    out = ToolRun(conn, _host_sh(_TOP_SCRIPT, token), where="host", label="ps").run()
    head, *procs = out.split(b"\n" + token.encode() + b" ")
    btime_s, uptime_s = [*head.split(b"\n"), b"0", b"0"][:2]
    btime, uptime = float(btime_s or 0), float(uptime_s or 0)
    users = _guest_users(conn)
    rows = []
    for raw in procs:
        uid, _, rest = raw.partition(b" ")
        stat_line, _, cmdline = rest.partition(b"\n")
        user = users.get(int(uid or 0), (uid or b"0").decode())
        rows.append(ps_ef_row(stat_line, cmdline[:-1], user, boot_time=btime, uptime=uptime,
                              hz=_GUEST_HZ))  # fmt: skip
    rows.sort(key=lambda r: int(r[1]))
    return rows


def _guest_users(conn: AgentConnection) -> dict[int, str]:
    """The container's /etc/passwd names (what ``ps`` in the container would show)."""
    run = ToolRun(conn, ["cat", "/etc/passwd"], where="tool")
    text = b"".join(run.output()).decode(errors="replace")
    users: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            users.setdefault(int(parts[2]), parts[0])
    return users


# -- cp --------------------------------------------------------------------------------

_MISSING, _NOT_DIR = 2, 3

# $1: the directory to archive from, $2: the entry (or "." for its contents), $3: "/"
# when the user's path ended in one (then it must be a directory), $4: "L" to archive
# what a symlink there leads to (resolved in the container: this runs chrooted), under
# its own name (the host renames it). The whole root is archived without /proc and
# /sys, the guest kernel's (busybox tar has no --exclude).
_COPY_OUT_SCRIPT = r"""
p=$1/$2
[ -e "$p" ] || [ -L "$p" ] || exit 2
[ -z "$3" ] || [ -d "$p" ] || exit 3
if [ -n "$4" ] && [ -L "$p" ]; then
  t=$(readlink -f "$p") && [ -e "$t" ] || exit 2
  [ "$t" = / ] && set -- / . "$3" || set -- "${t%/*}" "${t##*/}" "$3"
  [ -n "$1" ] || set -- / "$2" "$3"
fi
cd "$1" || exit 2
[ "$1/$2" = "//." ] || exec tar --numeric-owner -cf - "$2"
set --
for n in * .[!.]* ..?*; do
  case $n in proc|sys) continue ;; esac
  if [ -e "$n" ] || [ -L "$n" ]; then set -- "$@" "./$n"; fi
done
exec tar --numeric-owner -cf - "$@"
"""
_COPY_IN_SCRIPT = r"""
[ -e "$1" ] || exit 2
[ -d "$1" ] || exit 3
cd "$1" && exec tar --numeric-owner -xf -
"""
# $1: the path. Its raw mode (hex), size and mtime, without following a final symlink;
# then, for a symlink, where it leads (resolved in the container), or its raw target
# when that does not resolve.
_STAT_SCRIPT = r"""
[ -e "$1" ] || [ -L "$1" ] || exit 2
case $1 in */) [ -d "$1" ] || exit 3 ;; esac
stat -c '%f %s %Y' "$1" || exit 1
[ -L "$1" ] || exit 0
readlink -f "$1" 2>/dev/null || readlink "$1"
"""


def stat_path(conn: AgentConnection, path: str) -> PathStat:
    """``_fsops.stat_path`` in the guest: what is at ``path`` in the container."""
    from lamina.runtime._types import PathStat
    from lamina.runtime.common import not_found

    path = posixpath.join("/", path)
    run = ToolRun(conn, _sh(_STAT_SCRIPT, path), where="tool", label="stat")
    out = b"".join(run.output()).decode("utf-8", "surrogateescape").split("\n")
    if run.exit_code == _MISSING:
        raise not_found(path)
    if run.exit_code == _NOT_DIR:
        raise LaminaError(f"{path}: not a directory")
    if run.exit_code != 0 or not out[0]:
        raise LaminaError(f"cannot stat {path} in the container: {run.last_error()}")
    mode, size, mtime = out[0].split()
    target = out[1] if len(out) > 1 else ""
    if target and not target.startswith("/"):  # unresolved: relative to the link
        target = posixpath.normpath(posixpath.join(posixpath.dirname(path.rstrip("/")), target))
    name = posixpath.basename(path.rstrip("/")) or "/"
    return PathStat(name, int(size), int(mode, 16), float(mtime), target)


def copy_out(
    connect: Callable[[], AgentConnection], path: str, *, follow_link: bool = False
) -> Iterator[bytes]:
    """A tar stream of ``path`` in the container, as ``_fsops.copy_out`` makes it:
    the top entry named as ``archive_name`` says, a symlink archived as a link unless
    ``follow_link``, owners numeric. Errors (missing path, a file given as ``path/``)
    are raised here, before anything is yielded."""
    from lamina.runtime._fsops import archive_name
    from lamina.runtime.common import not_found

    path = posixpath.join("/", path)
    name = archive_name(path)
    stripped = path.rstrip("/") or "/"
    # "DIR/." and "/" archive the directory's contents, anything else its last entry.
    parent = (stripped.removesuffix("/.") or "/") if name == "." else posixpath.dirname(stripped)
    trailing = "/" if path.endswith("/") and stripped != "/" else ""
    follow = "L" if follow_link else ""
    conn = connect()
    try:
        script = _sh(_COPY_OUT_SCRIPT, parent, name, trailing, follow)
        run = ToolRun(conn, script, where="tool")
        chunks = run.output()
        first = next(chunks, b"")  # tar writes nothing before the checks passed
        if run.exit_code == _MISSING:
            raise not_found(path)
        if run.exit_code == _NOT_DIR:
            raise LaminaError(f"{path}: not a directory")
        if run.exit_code not in (None, 0):
            raise LaminaError(f"cannot copy {path} from the container: {run.last_error()}")
    except BaseException:
        conn.close()
        raise

    def stream() -> Iterator[bytes]:
        try:
            yield first
            yield from chunks
            if run.exit_code != 0:
                raise LaminaError(f"cannot copy {path} from the container: {run.last_error()}")
        finally:
            conn.close()

    if follow_link and name != ".":
        return renamed_top(stream(), name)  # the target's name -> the link's
    return stream()


def renamed_top(chunks: Iterator[bytes], name: str) -> Iterator[bytes]:
    """The tar stream ``chunks`` with its top entry (and everything below it) renamed
    ``name``, streamed: file data passes through in chunks."""
    with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as tf:  # type: ignore[call-overload]
        top = ""
        for ti in tf:
            tf.members.clear()  # keep no header per entry
            top = top or ti.name.rstrip("/").split("/")[0]
            ti.name = _rebase(ti.name, top, name)
            if ti.islnk():
                ti.linkname = _rebase(ti.linkname, top, name)
            yield ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            if not ti.isreg():
                continue
            data = tf.extractfile(ti)
            assert data is not None
            while chunk := data.read(1 << 20):
                yield chunk
            yield b"\0" * (-ti.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _rebase(entry: str, old: str, new: str) -> str:
    return new + entry[len(old) :] if entry == old or entry.startswith(old + "/") else entry


def copy_in(conn: AgentConnection, path: str, tar_stream: BinaryIO) -> None:
    """Extract a tar stream (plain, gzip or zstd: unpacked here) into directory
    ``path`` in the container, keeping the archive's numeric owners and modes, as
    ``_fsops.copy_in`` does."""
    from lamina.image import open_decompressed
    from lamina.runtime.common import not_found

    path = posixpath.join("/", path)
    with open_decompressed(tar_stream) as plain:
        run = ToolRun(conn, _sh(_COPY_IN_SCRIPT, path), where="tool", stdin=plain)
        for _ in run.output():
            pass
    if run.exit_code == _MISSING:
        raise not_found(path)
    if run.exit_code == _NOT_DIR:
        raise LaminaError(f"extraction point is not a directory: {path}")
    if run.exit_code != 0:
        raise LaminaError(f"cannot copy into {path} in the container: {run.last_error()}")


# -- diff ------------------------------------------------------------------------------

# One record per entry of the upper dir, NUL-terminated: kind, "1" if the image has the
# path (else "0"), then the path from "/". Kinds: d directory, o opaque directory (one
# that hides names the image has there), w whiteout (char device 0:0), f anything
# else, x a name of the image an opaque directory hides; s: "1" if the directory (/etc,
# /dev) has the same mode and owner as the image's.
_LIST_SCRIPT = r"""
cd /rw/upper || exit 1
find . -mindepth 1 -exec sh -c '
for p; do
  r=${p#.}
  l=0
  for b in /lower /base; do if [ -e "$b$r" ] || [ -L "$b$r" ]; then l=1; fi; done
  if [ -L "$p" ]; then k=f
  elif [ -d "$p" ]; then
    k=d
    if [ $l = 1 ]; then
      for b in /lower /base; do
        [ -d "$b$r" ] && [ ! -L "$b$r" ] || continue
        for n in "$b$r"/* "$b$r"/.[!.]* "$b$r"/..?*; do
          [ -e "$n" ] || [ -L "$n" ] || continue
          c=${n##*/}
          [ -e "$p/$c" ] || [ -L "$p/$c" ] || [ -e "/newroot$r/$c" ] || [ -L "/newroot$r/$c" ] \
            || { k=o; printf "x1%s\0" "$r/$c"; }
        done
      done
    fi
  elif [ -c "$p" ] && [ "$(stat -c %t%T "$p")" = 00 ]; then k=w
  else k=f; fi
  printf "%s%s%s\0" "$k" "$l" "$r"
done' sh {} +
for d in /etc /dev; do
  [ -d "/rw/upper$d" ] || continue
  for b in /lower /base; do
    [ -d "$b$d" ] || continue
    s=0
    [ "$(stat -c "%f %u %g" "/rw/upper$d")" = "$(stat -c "%f %u %g" "$b$d")" ] && s=1
    printf "s%s%s\0" "$s" "$d"
    break
  done
done
"""


@dataclass
class UpperListing:
    """The overlay upper dir of a running VM, as ``_LIST_SCRIPT`` reports it."""

    kinds: dict[str, str]  # path -> d, o, w or f
    in_image: set[str]  # paths the image has
    hidden: dict[str, set[str]]  # opaque dir -> the image's names it hides
    children: dict[str, list[str]]  # dir ("" for /) -> names in upper
    same_owner_mode: set[str]  # /etc, /dev when copied up unchanged


def upper_listing(conn: AgentConnection) -> UpperListing:
    out = ToolRun(conn, _host_sh(_LIST_SCRIPT), where="host", label="listing the changes").run()
    listing = UpperListing({}, set(), {}, {}, set())
    for rec in out.split(b"\0"):
        if len(rec) < 3:
            continue
        kind, flag = chr(rec[0]), rec[1:2] == b"1"
        path = rec[2:].decode("utf-8", "surrogateescape")
        if kind == "s":
            if flag:
                listing.same_owner_mode.add(path)
            continue
        parent, name = posixpath.split(path)
        if kind == "x":
            listing.hidden.setdefault(parent, set()).add(name)
            continue
        listing.kinds[path] = kind
        if flag:
            listing.in_image.add(path)
        listing.children.setdefault("" if parent == "/" else parent, []).append(name)
    return listing


def diff(listing: UpperListing, mountpoints: Iterable[str] = ()) -> list[Any]:
    """``docker diff`` from the listing, with ``_fsops.diff``'s rules: sorted by path.
    ``mountpoints``: the container's volume targets, whose empty stubs are left out."""
    from lamina.runtime._types import ChangeEntry

    out: list[ChangeEntry] = []
    stubs = MOUNT_STUBS | {posixpath.normpath("/" + m.lstrip("/")) for m in mountpoints}

    def walk(rel: str) -> bool:
        """Append the changes under ``rel``; True if something left out was below."""
        names = listing.children.get(rel, [])
        for name in sorted(listing.hidden.get(rel, set()) - set(names)):
            out.append(ChangeEntry("D", f"{rel}/{name}"))
        skipped = False
        for name in names:
            path = f"{rel}/{name}"
            kind, in_image = listing.kinds[path], path in listing.in_image
            if kind == "w":
                if in_image:
                    out.append(ChangeEntry("D", path))
                continue
            if path in AGENT_FILES and kind == "f":
                skipped = True
                continue
            is_dir = kind in ("d", "o")
            if path in stubs and not in_image and is_dir and not listing.children.get(path):
                skipped = True
                continue
            change = "C" if in_image else "A"
            out.append(ChangeEntry(change, path))
            if not is_dir:
                continue
            mark = len(out)
            below = walk(path)
            skipped = skipped or below
            if below and len(out) == mark and (change == "A" or path in listing.same_owner_mode):
                out.pop()  # there only because of the agent's files
        return skipped

    walk("")
    out.sort(key=lambda c: c.path)
    return out


# -- commit ----------------------------------------------------------------------------

# The container's processes into a frozen cgroup (cgroup v2 in the agent's root: the
# container's /sys has none mounted), or out of it again. The tar and the agent stay out.
_FREEZE_SCRIPT = r"""
g=/sys/fs/cgroup
[ -e $g/cgroup.procs ] || mount -t cgroup2 none $g || exit 1
mkdir -p $g/lamina-commit || exit 1
if [ "$1" = 1 ]; then
  cd /proc || exit 1
  for p in [0-9]*; do
    [ "$p/root" -ef /newroot ] || continue
    [ "$p/exe" -ef /bin/busybox ] && continue
    echo "$p" > $g/lamina-commit/cgroup.procs 2>/dev/null
  done
  echo 1 > $g/lamina-commit/cgroup.freeze
else
  echo 0 > $g/lamina-commit/cgroup.freeze
fi
"""


def freeze(conn: AgentConnection, frozen: bool) -> None:
    """Stop (``frozen``) or continue the container's processes in the guest."""
    script = _host_sh(_FREEZE_SCRIPT, "1" if frozen else "0")
    ToolRun(conn, script, where="host", label="freezing the container").run()


def upper_tree(
    conn: AgentConnection, listing: UpperListing, dest: Path, mountpoints: Iterable[str] = ()
) -> None:
    """Unpack the guest's upper dir into the empty directory ``dest`` in overlay form
    (whiteouts as char 0:0 devices, opaque dirs marked), without the agent's files."""
    from lamina.image import apply_layer
    from lamina.runtime._paths import secure_join

    run = ToolRun(conn, ["/bin/busybox", "tar", "--numeric-owner", "-C", "/rw/upper", "-cf",
                         "-", "."], where="host")  # fmt: skip
    apply_layer(_ChunkReader(run.output()), dest, overlay=True)  # type: ignore[arg-type]
    if run.exit_code != 0:
        raise LaminaError(f"cannot archive the container's changes: {run.last_error()}")
    for path, kind in listing.kinds.items():
        if kind == "o":
            target = secure_join(dest, path, follow_final=False)
            if os.path.isdir(target) and not os.path.islink(target):
                os.setxattr(target, _OPAQUE_XATTR, b"y", follow_symlinks=False)
    for path in AGENT_FILES:
        target = secure_join(dest, path, follow_final=False)
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
    stubs = [*mountpoints, *MOUNT_STUBS]
    kept = {c.path for c in diff(listing, stubs)}
    for path in ("/etc", *stubs):
        target = secure_join(dest, path, follow_final=False)
        if path not in kept and os.path.isdir(target) and not os.path.islink(target):
            try:
                os.rmdir(target)  # left only by the agent; empty by now
            except OSError:
                pass


def commit(
    conn: AgentConnection,
    local: Any,
    *,
    image_id: str,
    config: Any,
    reference: str | None,
    changes: Sequence[str],
    message: str | None,
    author: str | None,
    pause: bool,
) -> str:
    """``docker commit`` of a running VM container: its upper dir, unpacked on the host
    in overlay form, made into an image by ``_fsops.commit_image`` (the process
    backend's commit). ``pause`` freezes the container's processes during the tar."""
    from lamina.image import parse_reference
    from lamina.image._import import apply_changes
    from lamina.runtime import _fsops

    if reference is not None:
        parse_reference(reference)  # a bad name or change fails before any work
    apply_changes(changes, {})
    base = local.config(local.require(image_id))
    image_env = list((base.get("config") or {}).get("Env") or [])
    mountpoints = [m.target for m in config.mounts]
    # On the lamina root's filesystem: it must take char devices and trusted xattrs.
    (local.root / "vm" / "tmp").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="commit-", dir=local.root / "vm" / "tmp"))
    try:
        if pause:
            freeze(conn, True)
        try:
            listing = upper_listing(conn)
            upper_tree(conn, listing, scratch / "upper", mountpoints)
        finally:
            if pause:
                freeze(conn, False)
        record = _fsops.commit_image(
            local,
            base_image_id=image_id,
            upper=scratch / "upper",
            reference=reference,
            changes=changes,
            message=message,
            author=author,
            container_config=_fsops.committed_config(config, image_env),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(record.id)


class _ChunkReader:
    """A read()-able stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = chunks
        self._buf = bytearray()

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._it, None)
            if chunk is None:
                break
            self._buf += chunk
        if n < 0:
            n = len(self._buf)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def readable(self) -> bool:
        return True
