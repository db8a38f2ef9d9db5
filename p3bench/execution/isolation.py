"""Which isolation this machine allows, detected once, and the command line that puts a program inside it.

Levels, strongest first (``auto`` takes the first whose probe succeeds):

- ``namespaces`` (root, util-linux ``unshare`` and ``setpriv``): new network, PID, mount and IPC namespaces; a
  fresh tmpfs working directory at ``/tmp``; empty tmpfs over ``/var/tmp``, ``/dev/shm`` and ``/run``; the
  program runs as a unique unprivileged uid (so ``RLIMIT_NPROC`` is enforced) without groups and with
  ``no_new_privs``; killing ``unshare`` kills the whole namespace.
- ``uid`` (root without namespaces): the unique unprivileged uid, ``no_new_privs``, a host temporary
  directory owned by that uid; every process of the uid is killed afterwards. The network is not isolated.
- ``userns`` (not root, unprivileged user namespaces allowed): network, PID, mount and IPC namespaces and the
  tmpfs working directory, but the program keeps this user's file permissions.
- ``rlimits`` (anything else): resource limits, a new session and a host temporary directory only. As root,
  ``auto`` refuses to fall back to it (programs would run as root with no process limit); only a forced
  ``mode="rlimits"`` uses it there.

In every level: ``setrlimit`` limits (through ``prlimit(1)``, else a ``preexec_fn``), a scrubbed environment,
a process-group kill on timeout, and a per-run cgroup (memory and pids caps) where cgroups are writable.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from p3bench.errors import ConfigError
from p3bench.execution.cgroups import CgroupSupport, RunCgroup, detect_cgroups
from p3bench.execution.limits import MiB, SandboxLimits, apply_rlimits
from p3bench.execution.uids import UID_BASE, UID_SPAN, kill_uid, run_uid, user_process_count

logger = logging.getLogger(__name__)

#: Directories an unprivileged process could write to on most systems; hidden by empty tmpfs in namespaces.
SHARED_WRITABLE = ("/var/tmp", "/dev/shm", "/run")
WORKDIR_IN_NAMESPACE = "/tmp"

# Runs as (namespace) root before the program: join the run's cgroups, mount the tmpfs working directory and
# hide the shared writable directories, then drop to the run's uid. Arguments: mode uid workdir_mb setpriv
# cgroup.procs... -- command...
_SETUP = r"""set -eu
mode=$1; uid=$2; size=$3; setpriv=$4; shift 4
while [ "$1" != "--" ]; do echo 0 > "$1"; shift; done
shift
if [ "$mode" != uid ]; then
  owner=""
  if [ "$mode" = namespaces ]; then owner=",uid=$uid,gid=$uid"; fi
  mount -t tmpfs -o "size=${size}m,mode=0700,nosuid,nodev$owner" p3bench-workdir /tmp
  for d in /var/tmp /dev/shm /run; do
    if [ -d "$d" ] && [ ! -L "$d" ]; then
      mount -t tmpfs -o size=64k,mode=0755,nosuid,nodev,noexec p3bench-empty "$d"
    fi
  done
  cd /tmp
fi
if [ "$mode" = userns ]; then exec "$@"; fi
exec "$setpriv" --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs -- "$@"
"""

_PROBE = (
    "import json, os, sys; paths = json.loads(sys.argv[1]); "
    "print(json.dumps({'uid': os.getuid(), 'version': '%d.%d.%d' % sys.version_info[:3], "
    "'readable': [p for p in paths if os.access(p, os.R_OK | os.X_OK)]}))"
)


@dataclass(frozen=True)
class Isolation:
    """The isolation level in force and what it needs to build command lines."""

    mode: str
    python: str
    python_version: str
    unshare: str | None = None
    setpriv: str | None = None
    prlimit: str | None = None
    cgroup: CgroupSupport | None = None
    extra_sys_path: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def namespaces(self) -> bool:
        return self.mode in ("namespaces", "userns")

    @property
    def drops_privileges(self) -> bool:
        """The program runs as a unique unprivileged uid of its own."""
        return self.mode in ("namespaces", "uid")

    @property
    def can_sweep(self) -> bool:
        """``kill(-1)`` inside the sandbox reaches only the sandbox's own processes."""
        return self.mode != "rlimits"

    def report(self, limits: SandboxLimits | None = None) -> dict[str, Any]:
        """What is in force, for logs and results files."""
        network = {
            "namespaces": "isolated: own network namespace (no interfaces but a loopback that is down)",
            "userns": "isolated: own network namespace (no interfaces but a loopback that is down)",
        }.get(self.mode, "NOT isolated: the program can reach whatever this machine can")
        user = {
            "namespaces": f"a unique unprivileged uid per run ({UID_BASE}-{UID_BASE + UID_SPAN - 1}), "
            "no groups, no_new_privs",
            "uid": f"a unique unprivileged uid per run ({UID_BASE}-{UID_BASE + UID_SPAN - 1}), no groups, "
            "no_new_privs",
        }.get(self.mode, f"the current user (uid {os.getuid()}): its file permissions apply")
        workdir = (
            f"fresh tmpfs at {WORKDIR_IN_NAMESPACE}, gone with the namespace"
            if self.namespaces
            else "fresh host temporary directory, removed afterwards"
        )
        report: dict[str, Any] = {
            "mode": self.mode,
            "network": network,
            "pid_namespace": self.namespaces,
            "mount_namespace": self.namespaces,
            "user": user,
            "nproc_enforced": self.mode != "rlimits" or os.geteuid() != 0,
            "cgroup": self.cgroup.describe() if self.cgroup else None,
            "workdir": workdir,
            "hidden_paths": [WORKDIR_IN_NAMESPACE, *SHARED_WRITABLE] if self.namespaces else [],
            "rlimits_via": "prlimit" if self.prlimit else "preexec_fn",
            "python": self.python,
            "python_version": self.python_version,
            "extra_sys_path": list(self.extra_sys_path),
            "is_root": os.geteuid() == 0,
            "notes": list(self.notes),
        }
        if limits is not None:
            report["limits"] = {name: getattr(limits, name) for name in SandboxLimits.field_names()}
        return report

    def command(
        self,
        argv: Sequence[str],
        limits: SandboxLimits,
        *,
        uid: int | None,
        cgroup: RunCgroup | None,
        nproc: int | None,
    ) -> list[str]:
        """The full command line running ``argv`` inside this isolation (rlimits via ``prlimit`` if any)."""
        prefix = [self.prlimit, *limits.prlimit_args(nproc), "--"] if self.prlimit else []
        if self.mode == "rlimits":
            return [*prefix, *argv]
        procs = cgroup.procs_files if cgroup is not None else []
        setup = [
            "/bin/sh",
            "-c",
            _SETUP,
            "p3bench-sandbox",
            self.mode,
            str(uid if uid is not None else os.getuid()),
            str(limits.workdir_mb),
            self.setpriv or "setpriv",
            *procs,
            "--",
            *argv,
        ]
        if self.mode == "uid":
            return [*prefix, *setup]
        user = ["--user", "--map-root-user"] if self.mode == "userns" else []
        unshare = [
            self.unshare or "unshare",
            *user,
            "--net",
            "--pid",
            "--mount",
            "--ipc",
            "--fork",
            "--mount-proc",
        ]
        return [*prefix, *unshare, "--kill-child", "--", *setup]


# ------------------------------------------------------------------------------------------- detection

_MODE_ORDER = ("namespaces", "uid", "userns", "rlimits")


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


def _mode_possible(mode: str, tools: dict[str, str | None]) -> str | None:
    """None when ``mode`` can be tried here, else why not."""
    root = os.geteuid() == 0
    if not sys.platform.startswith("linux") and mode != "rlimits":
        return f"{mode}: needs Linux"
    if mode in ("namespaces", "uid") and not root:
        return f"{mode}: needs root"
    if mode == "userns" and root:
        return "userns: not needed as root"
    if mode in ("namespaces", "userns") and not tools["unshare"]:
        return f"{mode}: no unshare(1)"
    if mode in ("namespaces", "uid") and not tools["setpriv"]:
        return f"{mode}: no setpriv(1)"
    if mode != "rlimits" and not os.path.exists("/bin/sh"):
        return f"{mode}: no /bin/sh"
    return None


def _probe(candidate: Isolation, limits: SandboxLimits) -> tuple[dict | None, str]:
    """Run the probe program inside ``candidate``; its JSON answer, or None and the reason."""
    site_paths = _host_site_paths()
    cgroup = None
    with (
        run_uid(candidate.drops_privileges) as uid,
        tempfile.TemporaryDirectory(prefix="p3bench-probe-") as workdir,
    ):
        try:
            if candidate.cgroup is not None:
                cgroup = RunCgroup(candidate.cgroup, memory_bytes=limits.memory_mb * MiB, max_pids=32)
            argv = [candidate.python, "-s", "-B", "-c", _PROBE, json.dumps(site_paths)]
            nproc = None if uid is not None or os.geteuid() == 0 else user_process_count() + 32
            command = candidate.command(argv, limits, uid=uid, cgroup=cgroup, nproc=nproc)
            if uid is not None:
                os.chown(workdir, uid, uid)
            preexec = None if candidate.prlimit else functools.partial(apply_rlimits, limits.rlimits(nproc))
            done = subprocess.run(
                command,
                cwd=workdir,
                env=sandbox_env(workdir if not candidate.namespaces else WORKDIR_IN_NAMESPACE),
                capture_output=True,
                timeout=limits.timeout_s,
                start_new_session=True,
                preexec_fn=preexec,  # only where prlimit(1) is missing
            )
        except (OSError, subprocess.SubprocessError) as err:
            return None, f"{candidate.mode} with {candidate.python}: {type(err).__name__}: {err}"
        finally:
            if cgroup is not None:
                cgroup.remove()
            if uid is not None and candidate.mode == "uid":
                kill_uid(uid)
    if done.returncode != 0:
        reason = " ".join(done.stderr.decode(errors="replace").split())[-200:]
        return None, f"{candidate.mode} with {candidate.python}: exit {done.returncode} ({reason})"
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        return (
            None,
            f"{candidate.mode} with {candidate.python}: unreadable probe output {done.stdout[:100]!r}",
        )
    if candidate.drops_privileges and answer.get("uid") != uid:
        return None, f"{candidate.mode}: the probe ran as uid {answer.get('uid')}, expected {uid}"
    return answer, ""


@functools.cache
def detect_isolation(mode: str = "auto", python: str | None = None, use_cgroup: bool = True) -> Isolation:
    """The strongest isolation that works here (or exactly ``mode``), probed once per process.

    Each candidate runs a small probe program through the real command line; the first that answers wins.
    The sandbox interpreter is this one when the sandbox user can run it, else the system's Python of the
    same version (with this environment's site-packages appended to ``sys.path`` where readable).
    """
    if mode != "auto" and mode not in _MODE_ORDER:
        raise ConfigError(
            f"isolation mode {mode!r} is unknown: expected auto or one of {', '.join(_MODE_ORDER)}"
        )
    tools = {name: shutil.which(name) for name in ("unshare", "setpriv", "prlimit")}
    if not use_cgroup:
        cgroup_support, cgroup_note = None, "not used (use_cgroup=false)"
    elif os.geteuid() != 0:
        cgroup_support, cgroup_note = None, "not root"
    else:
        cgroup_support, cgroup_note = detect_cgroups()
    notes = [f"cgroups: {cgroup_note}"]
    limits = SandboxLimits(timeout_s=20.0)
    modes = _MODE_ORDER if mode == "auto" else (mode,)
    for candidate_mode in modes:
        if mode == "auto" and candidate_mode == "rlimits" and os.geteuid() == 0:
            raise ConfigError(
                "no sandbox isolation level that drops root works here, and the 'rlimits' fallback would run "
                "programs as root with no process limit: fix a stronger level or, to accept that, force "
                f"execution mode=rlimits ({'; '.join(notes[-4:])})"
            )
        why_not = _mode_possible(candidate_mode, tools)
        if why_not:
            notes.append(why_not)
            continue
        for interpreter in _python_candidates(python):
            for cgroup in [cgroup_support, None] if cgroup_support is not None else [None]:
                candidate = Isolation(
                    mode=candidate_mode,
                    python=interpreter,
                    python_version="",
                    unshare=tools["unshare"],
                    setpriv=tools["setpriv"],
                    prlimit=tools["prlimit"],
                    cgroup=cgroup,
                )
                answer, reason = _probe(candidate, limits)
                if answer is None:
                    notes.append(reason)
                    continue
                same_python = os.path.realpath(interpreter) == os.path.realpath(sys.executable)
                host_version = f"{sys.version_info.major}.{sys.version_info.minor}"
                extra: tuple[str, ...] = ()
                if not same_python and answer["version"].rsplit(".", 1)[0] == host_version:
                    extra = tuple(answer["readable"])
                isolation = Isolation(
                    mode=candidate_mode,
                    python=interpreter,
                    python_version=answer["version"],
                    unshare=tools["unshare"],
                    setpriv=tools["setpriv"],
                    prlimit=tools["prlimit"],
                    cgroup=cgroup,
                    extra_sys_path=extra,
                    notes=tuple(notes),
                )
                logger.info("sandbox isolation: %s", isolation.report())
                return isolation
    raise ConfigError(
        f"no sandbox isolation level {'works' if mode == 'auto' else repr(mode) + ' works'} here: "
        + "; ".join(notes[-6:])
    )


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


def isolation_report(mode: str | None = None, limits: SandboxLimits | None = None) -> dict[str, Any]:
    """What isolation is in force here (detected once): the dict results files record."""
    from p3bench.execution.policy import execution_settings

    settings = execution_settings()
    return detect_isolation(mode or settings.mode, None, settings.use_cgroup).report(
        limits or settings.limits
    )
