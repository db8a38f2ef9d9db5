"""Which isolation this machine allows, detected once by probing each level, and what is in force.

Levels, strongest first (``auto`` takes the first whose probe succeeds):

- ``bwrap`` (bubblewrap installed; as root or, through an unprivileged user namespace, not): new PID,
  network, IPC, UTS, cgroup and mount namespaces; the program sees only the read-only
  :mod:`~p3bench.execution.view` (interpreter and system libraries), a fresh tmpfs working directory, its
  own ``/proc`` and a minimal ``/dev``; as root it runs as a unique unprivileged uid; ``no_new_privs``.
- ``namespaces`` (root, util-linux ``unshare``, ``setpriv`` and ``pivot_root``): the same namespaces (but
  cgroup) and the same view, built by a shell script; the unique uid; ``no_new_privs``.
- ``uid`` (root without namespaces, e.g. a container without ``CAP_SYS_ADMIN``): the unique uid,
  ``no_new_privs``, a host working directory; every process of the uid is killed afterwards and its files
  in the world-writable directories and its SysV IPC objects removed. Nothing is hidden but what the uid
  may not read, and the network is not isolated.
- ``userns`` (not root, unprivileged user namespaces, no bubblewrap): namespaces and the view as in
  ``namespaces``, but the program is root of its user namespace (the user's permissions on the host).
- ``rlimits`` (anything else): resource limits, a new session and a host working directory only. As root,
  ``auto`` refuses to fall back to it (programs would run as root with no process limit); only a forced
  ``mode="rlimits"`` uses it there.

In every level: ``setrlimit`` limits, a scrubbed environment, and a per-run cgroup (memory and pids caps)
where cgroups are writable; see :mod:`p3bench.execution.launch` for the command lines.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from typing import Any

from p3bench.errors import ConfigError
from p3bench.execution.cgroups import CgroupSupport, detect_cgroups
from p3bench.execution.launch import Program, new_root_mountpoint
from p3bench.execution.limits import SandboxLimits
from p3bench.execution.uids import UID_BASE, UID_SPAN
from p3bench.execution.view import WORKDIR, ProgramView, interpreter_prefixes, program_view

logger = logging.getLogger(__name__)

_MAGIC = importlib.util.MAGIC_NUMBER.hex()
MODE_ORDER = ("bwrap", "namespaces", "uid", "userns", "rlimits")
_TOOLS = ("bwrap", "unshare", "setpriv", "pivot_root")
_INSTALL_BWRAP = "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"

# The deepest recursion a program reaches at its top level: the recursion limit less what the interpreter,
# and in the sandbox the entry point, take.
_DEEPEST = """def deepest():
    def down(depth):
        try:
            return down(depth + 1)
        except RecursionError:
            return depth
    return down(1)
"""
# Prints what the level gives the program: its uid, the interpreter's version, which of the host's
# site-packages it can read, whether numpy (the APPS header's np) can be imported, and the recursion depths.
_PROBE = """paths = json.loads({paths!r})
readable = [p for p in paths if os.access(p, os.R_OK | os.X_OK)]
sys.path.extend(p for p in readable if p not in sys.path)
print(json.dumps({{'uid': os.getuid(), 'version': '%d.%d.%d' % sys.version_info[:3], 'readable': readable,
                  'numpy': importlib.util.find_spec('numpy') is not None, 'deepest': deepest(),
                  'magic': importlib.util.MAGIC_NUMBER.hex()}}))
"""


@dataclass(frozen=True)
class Isolation:
    """The isolation level in force and what it needs to build command lines."""

    mode: str
    python: str
    python_version: str
    tools: tuple[tuple[str, str | None], ...] = ()
    cgroup: CgroupSupport | None = None
    view: ProgramView | None = None
    newroot: str | None = None
    extra_sys_path: tuple[str, ...] = ()
    site_packages: tuple[str, ...] = ()
    missing_site_packages: tuple[str, ...] = ()
    numpy: bool = False
    frames: int = 0
    bytecode: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def tool(self) -> dict[str, str | None]:
        return dict(self.tools)

    @property
    def namespaces(self) -> bool:
        """The program runs in its own PID, network and mount namespaces, seeing only the view."""
        return self.mode in ("bwrap", "namespaces", "userns")

    @property
    def drops_privileges(self) -> bool:
        """The program runs as a unique unprivileged uid of its own."""
        return self.mode in ("namespaces", "uid") or (self.mode == "bwrap" and os.geteuid() == 0)

    @property
    def can_sweep(self) -> bool:
        """``kill(-1)`` inside the sandbox reaches only the sandbox's own processes."""
        return self.mode != "rlimits"

    def nproc(self, limits: SandboxLimits, uid: int | None) -> int | None:
        """The ``RLIMIT_NPROC`` value: None (``max_processes``) where the run has a uid of its own or runs
        as root; else the user's current count plus ``max_processes`` (the limit counts all of them)."""
        if uid is not None or os.geteuid() == 0:
            return None
        from p3bench.execution.uids import user_process_count

        return user_process_count() + limits.max_processes + 1  # + 1: the init, as this user

    def report(self, limits: SandboxLimits | None = None) -> dict[str, Any]:
        """What is in force, for logs and results files."""
        unique_uid = f"a unique unprivileged uid per run ({UID_BASE}-{UID_BASE + UID_SPAN - 1}), no groups"
        user = (
            f"{unique_uid}, no_new_privs"
            if self.drops_privileges
            else {
                "bwrap": f"the current user (uid {os.getuid()}) in a user namespace, no capabilities",
                "userns": f"root of a user namespace (the current user, uid {os.getuid()}, on the host)",
            }.get(self.mode, f"the current user (uid {os.getuid()}): its file permissions apply")
        )
        if self.namespaces and self.view is not None:
            files: Any = {
                "shown_read_only": self.view.shown(),
                "hidden": "everything else of the host's file system (home directories, the project, its "
                "data, /work, /srv, /mnt, /opt, /var, /run, /sys, the rest of /etc, the host's /tmp)",
                "proc": "the run's own",
                "dev": "null, zero, full, random, urandom",
            }
        else:
            files = "the whole host file system, as far as the program's user may read it (nothing hidden)"
        packages: dict[str, Any] = {
            "site_packages": list(self.site_packages),
            "numpy_importable": self.numpy,
        }
        if self.missing_site_packages:
            packages["MISSING"] = (
                f"the sandbox cannot read {', '.join(self.missing_site_packages)}: packages installed there "
                "(numpy among them, the APPS header's np) cannot be imported by programs"
            )
        report: dict[str, Any] = {
            "mode": self.mode,
            "tool": self._tool_description(),
            "network": "isolated: own network namespace (only a loopback device)"
            if self.namespaces
            else "NOT isolated: the program can reach whatever this machine can",
            "pid_namespace": self.namespaces,
            "mount_namespace": self.namespaces,
            "init": {
                "uid": "the entry point, in front of the program: a child subreaper that reaps orphans and, once "
                "the program ends, kills and reaps what it left (no PID namespace)",
                "rlimits": "none (no PID namespace): orphans go to the host's init",
            }.get(
                self.mode, "/bin/sh as PID 1 of the run's PID namespace: reaps orphans, ends with the program"
            ),
            "user": user,
            "nproc_enforced": self.mode != "rlimits" or os.geteuid() != 0,
            "cgroup": self.cgroup.describe() if self.cgroup else None,
            "workdir": f"fresh tmpfs at {WORKDIR}, gone with the namespace"
            if self.namespaces
            else "fresh host temporary directory, removed afterwards",
            "file_system": files,
            "rlimits_via": "setrlimit in the sandbox's entry point",
            "python": self.python,
            "python_version": self.python_version,
            "extra_sys_path": list(self.extra_sys_path),
            "recursion_limit_raised_by": self.frames,
            "packages": packages,
            "is_root": os.geteuid() == 0,
            "notes": list(self.notes),
        }
        if limits is not None:
            report["limits"] = {name: getattr(limits, name) for name in SandboxLimits.field_names()}
        return report

    def _tool_description(self) -> str:
        tools = self.tool
        if self.mode == "bwrap":
            return f"bubblewrap {_bwrap_version(tools.get('bwrap') or 'bwrap')} ({tools.get('bwrap')})"
        if self.mode in ("namespaces", "userns"):
            return "util-linux unshare, setpriv and pivot_root with a mount script (p3bench.execution.launch)"
        if self.mode == "uid":
            return "util-linux setpriv"
        return "setrlimit only"


@functools.cache
def _bwrap_version(path: str) -> str:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "(version unknown)"
    return done.stdout.strip().removeprefix("bubblewrap ") or "(version unknown)"


# ------------------------------------------------------------------------------------------- detection


def _python_candidates(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    names = [
        sys.executable,
        os.path.realpath(sys.executable),
        shutil.which(f"python{version}"),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
        "/usr/bin/python3",
        shutil.which("python3"),
    ]
    unique: list[str] = []
    for name in names:
        if name and name not in unique and os.path.isfile(name) and os.access(name, os.X_OK):
            unique.append(name)
    return unique


def _host_site_paths() -> list[str]:
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [p for i, p in enumerate(paths) if p and p not in paths[:i] and os.path.isdir(p)]


def _find_tools() -> dict[str, str | None]:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return {name: shutil.which(name, path=path) for name in _TOOLS}


def _mode_possible(mode: str, tools: dict[str, str | None]) -> str | None:
    """None when ``mode`` can be tried here, else why not."""
    root = os.geteuid() == 0
    if not sys.platform.startswith("linux") and mode != "rlimits":
        return f"{mode}: needs Linux"
    if mode == "bwrap" and not tools.get("bwrap"):
        return f"bwrap: {_INSTALL_BWRAP}"
    if mode in ("namespaces", "uid") and not root:
        return f"{mode}: needs root"
    if mode == "userns" and root:
        return "userns: not needed as root"
    for name in ("unshare", "pivot_root", "setpriv"):
        if mode in ("namespaces", "userns") and not tools.get(name):
            return f"{mode}: no {name}(8)"
    if mode == "uid" and not tools.get("setpriv"):
        return "uid: no setpriv(1)"
    if mode != "rlimits" and not os.path.exists("/bin/sh"):
        return f"{mode}: no /bin/sh"
    return None


def _probe(candidate: Isolation, limits: SandboxLimits) -> tuple[dict | None, str]:
    """Run the probe program inside ``candidate``; its JSON answer, or None and the reason."""
    from p3bench.execution.process import run_in

    source = "import importlib.util, json, os, sys\n" + _DEEPEST
    source += _PROBE.format(paths=json.dumps(_host_site_paths()))
    try:
        result = run_in(candidate, limits, Program(source=source))
    except (OSError, subprocess.SubprocessError, RuntimeError) as err:
        return None, f"{candidate.mode} with {candidate.python}: {type(err).__name__}: {err}"
    if result.returncode != 0 or result.timed_out:
        reason = " ".join(result.stderr.decode(errors="replace").split())[-300:]
        return None, f"{candidate.mode} with {candidate.python}: exit {result.returncode} ({reason})"
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        return (
            None,
            f"{candidate.mode} with {candidate.python}: unreadable probe output {result.stdout[:100]!r}",
        )
    if candidate.drops_privileges and not UID_BASE <= answer.get("uid", -1) < UID_BASE + UID_SPAN:
        return None, f"{candidate.mode}: the probe ran as uid {answer.get('uid')}, not a sandbox uid"
    return answer, ""


@functools.cache
def detect_isolation(mode: str = "auto", python: str | None = None, use_cgroup: bool = True) -> Isolation:
    """The strongest isolation that works here (or exactly ``mode``), probed once per process.

    Each candidate runs a small probe program through the real command line; the first that answers wins.
    The sandbox interpreter is this one when the sandbox user can run it, else the system's Python of the
    same version (with this environment's site-packages appended to ``sys.path`` where readable).
    """
    if mode != "auto" and mode not in MODE_ORDER:
        raise ConfigError(
            f"isolation mode {mode!r} is unknown: expected auto or one of {', '.join(MODE_ORDER)}"
        )
    tools = _find_tools()
    if not use_cgroup:
        cgroup_support, cgroup_note = None, "not used (use_cgroup=false)"
    elif os.geteuid() != 0:
        cgroup_support, cgroup_note = None, "not root"
    else:
        cgroup_support, cgroup_note = detect_cgroups()
    notes = [f"cgroups: {cgroup_note}"]
    view = program_view(interpreter_prefixes() + _host_site_paths(), [os.getcwd(), os.path.expanduser("~")])
    newroot = new_root_mountpoint(view.sources())
    limits = SandboxLimits(timeout_s=20.0)
    modes = MODE_ORDER if mode == "auto" else (mode,)
    for candidate_mode in modes:
        if mode == "auto" and candidate_mode == "rlimits" and os.geteuid() == 0:
            raise ConfigError(
                "no sandbox isolation level that drops root works here, and the 'rlimits' fallback would run "
                "programs as root with no process limit: fix a stronger level or, to accept that, force "
                f"execution mode=rlimits ({'; '.join(notes[-4:])})"
            )
        why_not = _mode_possible(candidate_mode, tools)
        if why_not is None and candidate_mode in ("namespaces", "userns") and newroot is None:
            why_not = f"{candidate_mode}: no host directory to mount the new root on"
        if why_not:
            notes.append(why_not)
            continue
        for interpreter in _python_candidates(python):
            # this interpreter's bytecode spares compiling the entry point at every run; probed that way
            same = os.path.realpath(interpreter) == os.path.realpath(sys.executable)
            for bytecode in (True, False) if same else (False,):
                for cgroup in [cgroup_support, None] if cgroup_support is not None else [None]:
                    candidate = Isolation(
                        mode=candidate_mode,
                        python=interpreter,
                        python_version="",
                        tools=tuple(tools.items()),
                        cgroup=cgroup,
                        view=view,
                        newroot=newroot,
                        bytecode=bytecode,
                    )
                    answer, reason = _probe(candidate, limits)
                    if answer is not None and bytecode and answer.get("magic") != _MAGIC:
                        answer, reason = None, f"{candidate_mode}: {interpreter} reads other bytecode"
                    if answer is None:
                        notes.append(reason)
                        continue
                    isolation = _detected(candidate, answer, notes)
                    logger.info("sandbox isolation: %s", isolation.report())
                    return isolation
    raise ConfigError(
        f"no sandbox isolation level {'works' if mode == 'auto' else repr(mode) + ' works'} here: "
        + "; ".join(notes[-6:])
    )


def _detected(candidate: Isolation, answer: dict, notes: list[str]) -> Isolation:
    """The isolation ``candidate`` with what its probe found: version, site-packages, numpy."""
    same_python = os.path.realpath(candidate.python) == os.path.realpath(sys.executable)
    host_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    readable = tuple(answer.get("readable", ()))
    extra: tuple[str, ...] = ()
    if not same_python and answer["version"].rsplit(".", 1)[0] == host_version:
        extra = readable
    missing = tuple(p for p in _host_site_paths() if p not in readable)
    if missing:
        notes = [*notes, f"site-packages not readable inside the sandbox: {', '.join(missing)}"]
    return Isolation(
        mode=candidate.mode,
        python=candidate.python,
        python_version=answer["version"],
        tools=candidate.tools,
        cgroup=candidate.cgroup,
        view=candidate.view,
        newroot=candidate.newroot,
        extra_sys_path=extra,
        site_packages=readable,
        missing_site_packages=missing,
        numpy=bool(answer.get("numpy")),
        frames=_frames(_bare_deepest(candidate.python) - int(answer.get("deepest", 0))),
        bytecode=candidate.bytecode,
        notes=tuple(notes),
    )


def _frames(value: int) -> int:
    """A recursion-limit allowance measured by the probe: small and non-negative, else none (0)."""
    return value if 0 <= value <= 16 else 0


@functools.cache
def _bare_deepest(python: str) -> int:
    """The deepest recursion a program reaches at its top level when ``python`` runs it directly."""
    source = _DEEPEST + "print(deepest())\n"
    try:
        done = subprocess.run([python, "-s", "-B", "-c", source], capture_output=True, timeout=60, check=True)
        return int(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return -1


def isolation_report(mode: str | None = None, limits: SandboxLimits | None = None) -> dict[str, Any]:
    """What isolation is in force here (detected once): the dict results files record."""
    from p3bench.execution.policy import execution_settings

    settings = execution_settings()
    return detect_isolation(mode or settings.mode, None, settings.use_cgroup).report(
        limits or settings.limits
    )
