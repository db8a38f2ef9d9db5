"""What a sandboxed program sees of the host's file system in the levels with a mount namespace.

The program needs the interpreter, its standard library, its site-packages (numpy for the APPS header's
``np``) and the shared libraries they load; nothing else of the host. :func:`program_view` lists exactly
that, read-only: the system directories (``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or
directories beside it), the dynamic loader's cache, the time zone and the ``alternatives`` links from
``/etc``, and the interpreter's prefixes (its installation and virtual environment). Everything
else is hidden: home directories, ``/root``, the project's source tree and data, ``/work``, ``/srv``,
``/mnt``, ``/media``, ``/opt``, ``/var``, ``/run``, ``/boot``, ``/sys``, the rest of ``/etc`` and the
host's ``/tmp``; ``/proc`` is the run's own and ``/dev`` a minimal one.

A prefix that contains the current directory or ``$HOME`` (a virtual environment created at the top of a
project, say) is shown only through its ``bin``, ``lib*`` and ``pyvenv.cfg``, so that the project itself
stays hidden.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Directories of the operating system shown read-only (or re-created as the same symlinks).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Files of /etc that programs may need: the dynamic loader's cache, the time zone, and the Debian
#: ``alternatives`` links that some /usr/bin commands point through.
ETC_PATHS = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives")
#: Where the fresh working directory is mounted inside the view.
WORKDIR = "/tmp"
#: Parts of a prefix shown when the prefix itself contains something private.
_PREFIX_ESSENTIALS = ("bin", "lib", "lib32", "lib64", "pyvenv.cfg")


@dataclass(frozen=True)
class ViewEntry:
    """One host path in the view: ``bind`` shows ``path`` read-only, ``symlink`` re-creates it as a link to
    ``target`` (as on the host)."""

    kind: str
    path: str
    target: str = ""


@dataclass(frozen=True)
class ProgramView:
    """The host paths a program sees, in an order where every parent comes before its children."""

    entries: tuple[ViewEntry, ...]

    def shown(self) -> list[str]:
        """The host paths shown (read-only), for reports."""
        return [e.path if e.kind == "bind" else f"{e.path} -> {e.target}" for e in self.entries]

    def sources(self) -> list[str]:
        return [e.path for e in self.entries if e.kind == "bind"]

    def bwrap_args(self) -> list[str]:
        """bubblewrap options building the view on a fresh root. Parent directories are created with
        ``--dir`` (mode 0755): bubblewrap 0.8 creates the parents of a bind mount with mode 0700, which
        the sandbox's uid could not traverse."""
        args: list[str] = []
        made: set[str] = {"/"}
        for entry in self.entries:
            for parent in _parents(entry.path):
                if parent not in made:
                    args += ["--dir", parent]
                    made.add(parent)
            if entry.kind == "symlink":
                args += ["--symlink", entry.target, entry.path]
            else:
                args += ["--ro-bind", entry.path, entry.path]
            made.add(entry.path)
        return args

    def setup_args(self) -> list[str]:
        """The view for the hand-written setup script (see :mod:`p3bench.execution.launch`): one argument
        with the directories to create (newline-separated, relative to the new root), one with the paths
        to copy as they are (the symlinks, and the few small files from /etc: a copy costs the script one
        command for all of them, a bind mount one each), then ``d:PATH`` (bind a directory read-only) and
        ``f:PATH`` (bind a file) entries."""
        directories: list[str] = []
        copies: list[str] = []
        binds: list[str] = []
        for entry in self.entries:
            for parent in _parents(entry.path):
                if parent not in directories:
                    directories.append(parent)
            if entry.kind == "symlink" or entry.path.startswith("/etc/"):
                copies.append(entry.path)
            elif os.path.isdir(entry.path):
                directories.append(entry.path)
                binds.append(f"d:{entry.path}")
            else:
                binds.append(f"f:{entry.path}")
        return ["\n".join(d.lstrip("/") for d in directories), "\n".join(copies), *binds]


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _inside(path: str, other: str) -> bool:
    """Whether ``path`` is ``other`` or lies below it."""
    return path == other or path.startswith(other.rstrip("/") + "/")


def interpreter_prefixes() -> list[str]:
    """This interpreter's installation and environment: its prefixes, the directory of its executable and
    its site-packages."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths.append(os.path.dirname(os.path.realpath(sys.executable)))
    scheme = sysconfig.get_paths()
    paths += [scheme["purelib"], scheme["platlib"], scheme["stdlib"], scheme["platstdlib"]]
    return [p for p in paths if p]


def program_view(prefixes: Iterable[str], private: Sequence[str] = ()) -> ProgramView:
    """The view for an interpreter whose installation lies in ``prefixes``; a prefix containing one of the
    ``private`` paths (the current directory, ``$HOME``) is narrowed to its essentials."""
    entries: list[ViewEntry] = []
    for path in (*SYSTEM_PATHS, *ETC_PATHS):
        if os.path.islink(path):
            entries.append(ViewEntry("symlink", path, os.readlink(path)))
        elif os.path.exists(path):
            entries.append(ViewEntry("bind", path))
    private_real = [os.path.realpath(p) for p in private if p]
    wanted: list[str] = []
    for prefix in prefixes:
        if not os.path.isdir(prefix):
            continue
        real = os.path.realpath(prefix)
        if any(_inside(p, real) for p in private_real):
            wanted += [os.path.join(os.path.abspath(prefix), part) for part in _PREFIX_ESSENTIALS]
        else:
            wanted.append(os.path.abspath(prefix))
    for path in sorted(set(wanted), key=lambda p: len(os.path.realpath(p))):
        if os.path.lexists(path):
            for entry in _entries_reaching(path):
                _add(entries, entry)
    return ProgramView(tuple(_order(entries)))


def _entries_reaching(path: str) -> list[ViewEntry]:
    """Entries that make ``path`` resolve in the view as on the host: each symlink met on the way (at its
    real location), then a bind of the real path."""
    found: list[ViewEntry] = []
    current = "/"
    for part in path.strip("/").split("/"):
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            found.append(ViewEntry("symlink", candidate, os.readlink(candidate)))
            current = os.path.realpath(candidate)
        else:
            current = candidate
    found.append(ViewEntry("bind", current))
    return found


def _add(entries: list[ViewEntry], entry: ViewEntry) -> None:
    """Add ``entry`` unless it is already shown: the same path, or a path inside a bind (which shows it)."""
    binds = [e.path for e in entries if e.kind == "bind"]
    if any(e.path == entry.path for e in entries) or any(_inside(entry.path, b) for b in binds):
        return
    if entry.kind == "bind":  # a wider bind replaces the narrower ones inside it
        entries[:] = [e for e in entries if not (e.kind == "bind" and _inside(e.path, entry.path))]
    entries.append(entry)


def _order(entries: list[ViewEntry]) -> list[ViewEntry]:
    """Parents before children; a symlink whose path lies below a later bind would be hidden, so binds of
    shorter paths come first."""
    return sorted(entries, key=lambda e: (e.path.count("/"), e.path))
