"""The command line that puts one program inside an isolation level, and the descriptors it needs.

Every level starts the program through :mod:`p3bench.execution._sandbox_entry` (joins the run's cgroup, sets
the resource limits, drops to the run's uid where it starts as root, then runs the program):

- ``bwrap``: ``bwrap`` (bubblewrap) builds new PID, network, IPC, UTS, cgroup and mount namespaces on a fresh
  root holding only the :class:`~p3bench.execution.view.ProgramView`, a new ``/proc``, a minimal ``/dev``
  and a tmpfs working directory; as root it keeps only ``CAP_SETUID`` and ``CAP_SETGID`` for the entry
  point to drop to the run's uid, and ``no_new_privs`` holds throughout. ``--as-pid-1`` makes our init (or
  the APPS runner) PID 1, so that bubblewrap reaps it before it exits.
- ``namespaces`` / ``userns``: util-linux ``unshare`` and :data:`SETUP`, a shell script that builds the same
  view with ``mount`` and ``pivot_root``, then drops to the run's uid with ``setpriv`` (``namespaces``, as
  root) or stays namespace root (``userns``).
- ``uid``: ``setpriv`` to the run's uid, in a host working directory; ``rlimits``: the entry point alone.

The init in front of a program (levels with a PID namespace, unless the command is its own init) is the
system shell: PID 1 runs the program in the foreground, reaps every orphan while it waits (so zombies never
fill the process limit), and exits with the program's status (``128 + N`` for a signal ``N``); its exit
ends the namespace and everything left in it. It does not forward signals: nothing signals a run from
outside but the final SIGKILL, which ends the whole namespace.
"""

from __future__ import annotations

import ast
import functools
import marshal
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from p3bench.execution.limits import SandboxLimits
from p3bench.execution.view import WORKDIR

if TYPE_CHECKING:
    from p3bench.execution.isolation import Isolation

#: The init in front of a program: runs it in the foreground (reaping orphans meanwhile), then exits with
#: its status. ``; exit $?`` keeps the shell from replacing itself with the program. The shell's own stderr
#: goes to /dev/null (it reports a program killed by a signal, "Killed", there); the program, in a subshell
#: that replaces itself with it, gets the run's (kept on fd 9: the host passes descriptors 10 and above).
INIT = ("/bin/sh", "-c", 'exec 9>&2 2>/dev/null; (exec 2>&9 9>&- "$@"); exit $?', "p3bench-init")

# The hand-written mount namespace setup (levels namespaces and userns), run as (namespace) root and PID 1
# of the new PID namespace. Arguments: mode uid workdir_mb setpriv pivot_root newroot init dirs copies
# ENTRY... -- command. ENTRY is d:PATH (bind a directory read-only) or f:PATH (a file); dirs (relative to
# /) and copies are newline-separated lists of directories to create and of paths to copy as they are
# (symlinks, small files). Its commands run with LC_ALL=C (loading no locale), the program with the run's. Builds the view on a tmpfs at newroot, makes it the root (pivot_root) and detaches the host's, then
# runs the command as the run's uid (namespaces) or namespace root (userns), with no_new_privs: in the
# foreground behind this shell as init (as INIT does), or in its place.
SETUP = r"""set -eu
mode=$1; uid=$2; size=$3; setpriv=$4; pivot=$5; root=$6; init=$7; dirs=$8; copies=$9; shift 9
locale=${LC_ALL-}
export LC_ALL=C
nl='
'
mount -t tmpfs -o size=4m,mode=0755,nosuid,nodev p3bench-root "$root"
cd "$root"
IFS=$nl
mkdir -p -- $dirs proc dev tmp
mount -t tmpfs -o size=64k,mode=0755,nosuid p3bench-dev "$root/dev"
cp -PR --parents -- $copies /dev/fd /dev/stdin /dev/stdout /dev/stderr "$root"
IFS=' '
while [ "$1" != "--" ]; do
  path=${1#?:}
  case $1 in f:*) : > "$root$path";; esac
  mount --bind -o ro -- "$path" "$root$path"
  shift
done
shift
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
if [ "$mode" = namespaces ]; then
  cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom "$root/dev/"
  owner=",uid=$uid,gid=$uid"
else
  for node in null zero full random urandom; do
    : > "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
  done
  owner=""
fi
mount -t tmpfs -o "size=${size}m,mode=0700,nosuid,nodev$owner" p3bench-workdir "$root/tmp"
"$pivot" . .
umount -l .
cd /tmp
export LC_ALL="$locale"
if [ "$mode" = namespaces ]; then
  set -- "$setpriv" --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs -- "$@"
else
  set -- "$setpriv" --no-new-privs -- "$@"
fi
if [ "$init" = 1 ]; then
  set +e
  exec 9>&2 2>/dev/null
  (exec 2>&9 9>&- "$@")
  exit $?
fi
exec "$@"
"""

#: The device nodes a program gets, and the links beside them.
DEVICES = ("null", "zero", "full", "random", "urandom")
DEVICE_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)
#: Runs the entry point from its compiled form (hex of ``marshal``), skipping the compilation of its source
#: at every run, where the sandbox's interpreter reads this interpreter's bytecode.
BOOTSTRAP = "import marshal,sys;exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))"

#: Longest command-line argument Linux takes (MAX_ARG_STRLEN is 32 pages), with room to spare.
_MAX_ARGUMENT = 120_000

_RLIMIT_NAMES = {
    getattr(resource, f"RLIMIT_{name}"): name for name in ("CPU", "AS", "FSIZE", "NOFILE", "CORE", "NPROC")
}


@functools.cache
def script_source(name: str) -> str:
    """The text of a script run inside the sandbox (``_sandbox_entry.py``, ``_apps_runner.py``), without
    docstrings and comments: it is compiled at every run, and the program must not see its docstring."""
    tree = ast.parse((Path(__file__).parent / name).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


@functools.lru_cache(maxsize=8)
def compiled_hex(source: str) -> str:
    """``source`` compiled (file name ``<string>``, as ``python -c``), marshalled, in hex: text that can
    travel as a command-line argument and needs no compiling in the sandbox."""
    return marshal.dumps(compile(source, "<string>", "exec", dont_inherit=True)).hex()


@dataclass(frozen=True)
class Program:
    """What to run: Python ``source`` in the sandbox's interpreter (``precompile``: compiled here once and
    sent as bytecode where the sandbox's interpreter reads it), or a command ``argv``."""

    source: str | None = None
    argv: tuple[str, ...] = ()
    precompile: bool = False

    def entry_args(self, bytecode: bool) -> list[str]:
        if self.source is None:
            return ["exec", *self.argv]
        if self.precompile and bytecode and len(compiled := compiled_hex(self.source)) <= _MAX_ARGUMENT:
            return ["bytecode", compiled]
        return ["code", self.source]


@dataclass
class Launch:
    """A ready command line: ``argv`` run in ``cwd`` with ``env``, inheriting ``pass_fds``. ``info_fd`` is
    the host's end of bubblewrap's ``--info-fd`` pipe (which names the namespace's PID 1)."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    info_fd: int | None = None
    close_after_start: list[int] = field(default_factory=list)


def entry_spec(
    limits: SandboxLimits,
    nproc: int | None,
    uid: int | None,
    cgroup_fd: int | None,
    init: bool = False,
    frames: int = 0,
) -> str:
    """The entry point's ``SPEC`` argument."""
    items = ["init=1"] if init else []
    if frames:
        items.append(f"frames={frames}")
    if cgroup_fd is not None:
        items.append(f"cgroup_fd={cgroup_fd}")
    rlimits = limits.rlimits(nproc)
    items.append("limits=" + ",".join(f"{_RLIMIT_NAMES[k]}:{s}:{h}" for k, (s, h) in rlimits.items()))
    if uid is not None:
        items.append(f"uid={uid}")
    return ";".join(items)


def sandbox_env(home: str) -> dict[str, str]:
    """The whole environment of a sandboxed program: no inherited variables, so no secrets."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def bwrap_command(
    bwrap: str, view_args: Sequence[str], limits: SandboxLimits, *, as_root: bool, info_fd: int
) -> list[str]:
    """bubblewrap up to ``--``: namespaces, the view, ``/proc``, ``/dev`` and the working directory."""
    command = [
        bwrap,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--as-pid-1",
        "--info-fd",
        str(info_fd),
    ]
    if as_root:  # the entry point needs these two to drop to the run's uid; nothing else survives
        command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    command += [*view_args, "--proc", "/proc", "--dir", "/dev"]
    for node in DEVICES:  # cheaper than --dev, which also mounts a devpts and a tmpfs
        command += ["--dev-bind", f"/dev/{node}", f"/dev/{node}"]
    for name, target in DEVICE_LINKS:
        command += ["--symlink", target, f"/dev/{name}"]
    command += ["--size", str(limits.workdir_mb << 20), "--perms", "1777", "--tmpfs", WORKDIR]
    return [*command, "--chdir", WORKDIR, "--"]


def unshare_command(
    tools: dict[str, str | None],
    mode: str,
    uid: int,
    limits: SandboxLimits,
    newroot: str,
    init: bool,
    setup_args: Sequence[str],
) -> list[str]:
    """util-linux ``unshare`` and :data:`SETUP` up to ``--`` (levels namespaces and userns)."""
    user = ["--user", "--map-root-user"] if mode == "userns" else []
    return [
        tools["unshare"] or "unshare",
        *user,
        "--net",
        "--pid",
        "--mount",
        "--ipc",
        "--uts",
        "--fork",
        "--kill-child",
        "--",
        "/bin/sh",
        "-c",
        SETUP,
        "p3bench-sandbox",
        mode,
        str(uid),
        str(limits.workdir_mb),
        tools["setpriv"] or "setpriv",
        tools["pivot_root"] or "pivot_root",
        newroot,
        "1" if init else "0",
        *setup_args,
        "--",
    ]


def new_root_mountpoint(view_sources: Sequence[str]) -> str | None:
    """An existing host directory to mount the new root on (inside the run's own mount namespace): one
    that holds none of the paths the view shows, since mounting over it hides what is below."""
    for candidate in ("/mnt", "/media", "/srv", "/opt", "/boot", "/tmp", "/var/tmp", "/run"):
        usable = os.path.isdir(candidate) and not os.path.islink(candidate)
        if usable and not any(s == candidate or s.startswith(candidate + "/") for s in view_sources):
            return candidate
    return None


def prepare_launch(
    isolation: Isolation,
    program: Program,
    limits: SandboxLimits,
    *,
    uid: int | None,
    cgroup_fd: int | None,
    nproc: int | None,
    workdir: str | None,
    init: bool,
) -> Launch:
    """The command line running ``program`` in ``isolation``; ``init=False`` makes the program itself PID 1
    of its namespace (it must reap its orphans: the APPS runner does)."""
    mode, tools = isolation.mode, isolation.tool
    fds = (cgroup_fd,) if cgroup_fd is not None else ()
    entry_uid = uid if mode == "bwrap" else None  # elsewhere setpriv drops privileges before the entry point
    entry_source = script_source("_sandbox_entry.py")
    entry = [isolation.python, "-s", "-B", "-c"]
    entry += [BOOTSTRAP, compiled_hex(entry_source)] if isolation.bytecode else [entry_source]
    entry += [
        entry_spec(limits, nproc, entry_uid, cgroup_fd, init=init and mode == "uid", frames=isolation.frames),
        *program.entry_args(isolation.bytecode),
    ]
    if mode == "bwrap":
        assert isolation.view is not None
        info_read, info_write = os.pipe()
        os.set_blocking(info_read, False)
        bwrap = bwrap_command(
            tools["bwrap"] or "bwrap",
            isolation.view.bwrap_args(),
            limits,
            as_root=uid is not None,
            info_fd=info_write,
        )
        argv = [*bwrap, *(INIT if init else ()), *entry]
        return Launch(argv, "/", sandbox_env(WORKDIR), (*fds, info_write), info_read, [info_write])
    if mode in ("namespaces", "userns"):
        assert isolation.view is not None and isolation.newroot is not None
        unshare = unshare_command(
            tools,
            mode,
            uid if uid is not None else os.getuid(),
            limits,
            isolation.newroot,
            init,
            isolation.view.setup_args(),
        )
        return Launch([*unshare, *entry], "/", sandbox_env(WORKDIR), fds)
    assert workdir is not None
    if mode == "uid":
        drop = [tools["setpriv"] or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return Launch([*drop, "--no-new-privs", "--", *entry], workdir, sandbox_env(workdir), fds)
    return Launch(entry, workdir, sandbox_env(workdir), fds)
