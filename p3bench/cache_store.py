"""One layout for every cache under ``paths.cache_dir`` (docs/caches.md).

An entry is a directory ``<cache_dir>/<kind>/<label>-<key>/`` holding its payload files and, written last,
``manifest.json``::

    key = CacheKey("scores", "askllm-xl", model=scorer.fingerprint, data=texts_fingerprint(texts))
    result = get_or_create(CacheStore(cache_dir).entry(key), load, build)

- ``kind`` is one of :data:`KINDS`; ``label`` a readable name (the embedder, the scorer's name, ``bpe-512``)
  that is not hashed; ``key`` is the sha256 of the kind, the model (or scorer) fingerprint, the data
  fingerprint and the config, as sorted JSON (:meth:`CacheKey.digest`), so the same inputs always give
  the same entry.
- The manifest records what the key was made of (model, data, config), when the entry was created, its
  size, each payload file's size and sha256, and what the computation reported (``info``: forward tokens,
  seconds). A reader takes an entry only when its manifest parses, names this key and lists files that
  exist with their recorded sizes; anything else is a miss. The full sha256 check is ``p3bench cache
  verify`` (hashing a gigabyte of embeddings on every hit would cost more than it protects).
- Writes: the payload and the manifest go into a temporary directory ``.<name>.<random>.tmp`` beside the
  entry, every file fsynced, and the directory is renamed into place (``os.replace``, atomic on one file
  system), so a reader sees no entry or a whole one. :func:`get_or_create` holds a :class:`filelock.FileLock`
  on ``<cache_dir>/.locks/<kind>/<name>.lock`` around compute-and-store: a second process asking for the
  same key waits, then reads the first one's entry instead of computing it again. A writer killed midway
  leaves a temporary directory (no entry: a miss) that ``p3bench cache verify --remove`` deletes once no
  process holds its lock. The processes of a ``torch.distributed`` group serialise on the lock too (one
  computes, the others read its entry), except for a computation declared ``collective=True`` (it runs
  collectives every process must join): then each process computes and the lock is held only to publish.

``filelock`` uses ``flock``; on NFS that is emulated with ``fcntl`` byte-range locks by Linux (NFSv4 and
NFSv3 with lockd), which serialise writers across nodes; on a file system without any locking, writes stay
atomic but two nodes may compute the same entry twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa
from filelock import FileLock, Timeout

from p3bench.utils.hashing import json_sha256
from p3bench.utils.io import atomic_write_json

KINDS = ("embeddings", "scores", "clusterings", "tokenizers", "weights", "kernels")
#: data folders beside the entries: train pools on disk and their tokens (p3bench/data/arrow_pool.py), and
#: Hugging Face datasets' Arrow copies of corpus files (p3bench/data/corpus_files.py); listed, verified
#: (pools: readable to the end) and cleaned like the entries, without manifests
DATA_FOLDERS = ("pools", "hf_datasets")
MANIFEST = "manifest.json"
LOCKS = ".locks"
FORMAT = 1
# folders that callers used to pass as their cache directory; a path ending in one stands for its parent
_KIND_FOLDERS = frozenset({*KINDS, "icl_utility", "standins", "clusters", "warm_start", "reference_models"})

T = TypeVar("T")


def cache_root(cache_dir: str | Path) -> Path:
    """The cache's top directory for ``cache_dir``: itself, or its parent when it names one kind's folder
    (``<cache_dir>/scores``, the older ``<cache_dir>/icl_utility``), so every caller files its entries in
    the one layout whichever of the two it passes."""
    path = Path(cache_dir)
    return path.parent if path.name in _KIND_FOLDERS else path


def texts_fingerprint(texts: Iterable[str]) -> dict[str, Any]:
    """The data fingerprint of texts in order: their count and the sha256 of every text length-prefixed
    (so no two different lists hash the same bytes)."""
    digest = hashlib.sha256()
    n = 0
    for text in texts:
        data = str(text).encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        n += 1
    return {"n": n, "sha256": digest.hexdigest()}


@dataclass(frozen=True)
class CacheKey:
    """What an entry depends on: ``kind`` (one of :data:`KINDS`), the ``model`` or scorer fingerprint, the
    ``data`` fingerprint and the ``config``, all JSON-able. ``label`` names the entry for people and is not
    hashed."""

    kind: str
    label: str
    model: Any
    data: Any
    config: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"cache kind {self.kind!r} is unknown: expected one of {', '.join(KINDS)}")
        if not self.label or "/" in self.label or self.label.startswith("."):
            raise ValueError(f"cache label {self.label!r} is invalid: expected a plain name")

    @property
    def parts(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "data": self.data, "config": self.config}

    @property
    def digest(self) -> str:
        """sha256 of :attr:`parts` as sorted JSON."""
        return json_sha256(self.parts)

    @property
    def name(self) -> str:
        return f"{self.label}-{self.digest}"


@dataclass
class CacheResult(Generic[T]):
    """What :func:`get_or_create` returns: the value, the entry's manifest and whether it was a hit."""

    value: T
    manifest: dict[str, Any]
    hit: bool

    @property
    def info(self) -> dict[str, Any]:
        return self.manifest.get("info", {})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def payload_files(directory: Path) -> list[Path]:
    """The payload files of an entry directory (every file but the manifest), relative, sorted."""
    return sorted(
        p.relative_to(directory) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of an entry directory, or None when it is missing or not a manifest."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("key"), str):
        return None
    return manifest


def manifest_problem(directory: Path, manifest: dict[str, Any], check_sha256: bool) -> str | None:
    """Why the entry's payload does not match its manifest (a file missing, of another size, or with
    another sha256 when ``check_sha256``), or None when it matches."""
    for relative, recorded in manifest["files"].items():
        path = directory / relative
        try:
            size = path.stat().st_size
        except OSError:
            return f"{relative} is missing"
        if not isinstance(recorded, dict) or size != recorded.get("size"):
            return f"{relative} has {size} bytes, the manifest says {recorded.get('size')}"
        if check_sha256 and file_sha256(path) != recorded.get("sha256"):
            return f"{relative} does not match its sha256"
    return None


class CacheEntry:
    """One entry of a :class:`CacheStore`: its directory, manifest and lock."""

    def __init__(self, root: Path, key: CacheKey) -> None:
        self.root = root
        self.key = key
        self.path = root / key.kind / key.name

    @property
    def lock_path(self) -> Path:
        return self.root / LOCKS / self.key.kind / f"{self.key.name}.lock"

    def lock(self) -> FileLock:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_path))

    def manifest(self) -> dict[str, Any] | None:
        """The entry's manifest when the entry is complete (module docstring), else None: a miss."""
        manifest = read_manifest(self.path)
        if manifest is None or manifest["key"] != self.key.digest:
            return None
        return None if manifest_problem(self.path, manifest, check_sha256=False) else manifest

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh temporary directory beside the entry; removed if the block fails or leaves it there."""
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.key.name}.", suffix=".tmp", dir=parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, tmp: Path, info: dict[str, Any] | None = None, seconds: float | None = None) -> dict:
        """Hash and fsync the payload in ``tmp``, write the manifest last, and rename ``tmp`` into place.
        The caller holds :meth:`lock`. Returns the manifest."""
        files: dict[str, dict[str, Any]] = {}
        for relative in payload_files(tmp):
            path = tmp / relative
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            files[relative.as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
        manifest = {
            "format": FORMAT,
            "kind": self.key.kind,
            "label": self.key.label,
            "key": self.key.digest,
            **{part: getattr(self.key, part) for part in ("model", "data", "config")},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": None if seconds is None else round(seconds, 3),
            "size": sum(entry["size"] for entry in files.values()),
            "files": files,
            "info": dict(info or {}),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the entry the usual permissions
        if self.path.exists():  # an incomplete entry (no valid manifest): ours replaces it under the lock
            stale = self.path.with_name(f".{self.key.name}.stale{os.getpid()}.tmp")
            os.replace(self.path, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, self.path)
        _fsync_directory(self.path.parent)
        return manifest


class CacheStore:
    """The entries under one cache directory (:func:`cache_root` of it)."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = cache_root(cache_dir)

    def entry(self, key: CacheKey) -> CacheEntry:
        return CacheEntry(self.root, key)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _load(entry: CacheEntry, load: Callable[[Path, dict[str, Any]], T | None]) -> CacheResult[T] | None:
    manifest = entry.manifest()
    if manifest is None:
        return None
    value = load(entry.path, manifest)
    return None if value is None else CacheResult(value, manifest, hit=True)


def get_or_create(
    entry: CacheEntry,
    load: Callable[[Path, dict[str, Any]], T | None],
    build: Callable[[Path], tuple[T, dict[str, Any]]],
    collective: bool = False,
) -> CacheResult[T]:
    """The entry's value: ``load(entry_dir, manifest)`` when the entry is complete (``load`` returns None
    for a payload it cannot use: a miss), else ``build(tmp_dir)``, which writes the payload into
    ``tmp_dir`` and returns the value and the ``info`` the manifest records, and the entry is published.
    Compute-and-store runs under the entry's lock; a process that waited on it reads the entry the
    holder wrote, so the processes of a DDP job (or the jobs of a sweep) compute it once and all use the
    same value. ``collective=True`` declares a ``build`` that runs collectives every process of a group
    must join: then no process may wait on the lock while another computes, so inside a group each
    computes and the lock is held only to publish."""
    found = _load(entry, load)
    if found is not None:
        return found
    if collective and _in_process_group():
        return _build_then_publish(entry, build)
    with entry.lock():
        found = _load(entry, load)
        if found is not None:
            return found
        with entry.staging() as tmp:
            start = time.perf_counter()
            value, info = build(tmp)
            manifest = entry.publish(tmp, info, seconds=time.perf_counter() - start)
    return CacheResult(value, manifest, hit=False)


def _in_process_group() -> bool:
    """Whether this process is one of a ``torch.distributed`` group (torch not imported: no)."""
    torch = sys.modules.get("torch")
    distributed = getattr(torch, "distributed", None) if torch is not None else None
    return bool(distributed is not None and distributed.is_available() and distributed.is_initialized())


def _build_then_publish(
    entry: CacheEntry, build: Callable[[Path], tuple[T, dict[str, Any]]]
) -> CacheResult[T]:
    """A ``collective`` computation inside a process group: every process computes (together), and the
    lock is held only to publish (the first entry stays; the others' copies are dropped)."""
    with entry.staging() as tmp:
        start = time.perf_counter()
        value, info = build(tmp)
        seconds = time.perf_counter() - start
        with entry.lock():
            manifest = entry.manifest() or entry.publish(tmp, info, seconds=seconds)
    return CacheResult(value, manifest, hit=False)


def store_entry(entry: CacheEntry, write: Callable[[Path], dict[str, Any] | None]) -> dict[str, Any]:
    """Write an entry whose value was computed elsewhere: ``write(tmp_dir)`` writes the payload and returns
    the manifest's ``info``. Under the entry's lock; an entry already complete is kept as it is."""
    with entry.lock():
        manifest = entry.manifest()
        if manifest is not None:
            return manifest
        with entry.staging() as tmp:
            info = write(tmp)
            return entry.publish(tmp, info)


def cached_arrays(
    cache_dir: str | Path, key: CacheKey, compute: Callable[[], dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], bool]:
    """Named arrays (``<name>.npy`` each) from the entry of ``key``, or ``compute()``d and stored there
    (:func:`get_or_create`); returns them and whether the cache served them. For array results such as a
    clustering's labels and centroids."""
    names: list[str] = []

    def load(directory: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray] | None:
        arrays = manifest.get("info", {}).get("arrays")
        if not isinstance(arrays, list):
            return None
        try:
            return {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in arrays}
        except (OSError, ValueError, EOFError):
            return None

    def build(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = compute()
        for name, array in arrays.items():
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"array name {name!r} is invalid: expected a plain file name")
            np.save(directory / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            names.append(name)
        return arrays, {"arrays": names}

    result = get_or_create(CacheStore(cache_dir).entry(key), load, build)
    return result.value, result.hit


def lock_is_free(lock_path: Path) -> bool:
    """Whether no process holds the lock at ``lock_path`` right now (taken and released at once)."""
    if not lock_path.exists():
        return True
    try:
        with FileLock(str(lock_path), timeout=0):
            return True
    except Timeout:
        return False


@dataclass
class EntryStatus:
    """What :func:`scan` found at one path of a cache directory."""

    kind: str
    name: str
    path: Path
    size: int
    manifest: dict[str, Any] | None = None
    problem: str | None = None  # None: a valid entry
    removable: bool = True  # False: a write in progress holds its lock


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def scan(cache_dir: str | Path, check_sha256: bool = False) -> list[EntryStatus]:
    """Every entry of the layout under ``cache_dir`` with its status, and every other path there (an older
    scheme's files, leftovers of interrupted writes), sorted by kind and name."""
    root = cache_root(cache_dir)
    found: list[EntryStatus] = []
    if not root.is_dir():
        return found
    for top in sorted(root.iterdir()):
        if top.name == LOCKS:
            continue
        if top.name in DATA_FOLDERS and top.is_dir():
            found.extend(_data_status(top, check_sha256))
            continue
        if top.name not in KINDS or not top.is_dir():
            found.append(EntryStatus("-", top.name, top, _tree_size(top), problem="not in the cache layout"))
            continue
        for path in sorted(top.iterdir()):
            found.append(_entry_status(root, top.name, path, check_sha256))
    return found


def _data_status(top: Path, check: bool) -> list[EntryStatus]:
    """The data folders' files: each pool file and tokenised pool (``pools/``, ``pools/encoded/``; with
    ``check``, a file that does not read as an Arrow stream to its end is a problem), and the Hugging Face
    datasets cache (``hf_datasets/``) as one entry. They carry no manifest: a pool file is named by its
    content or its source's key (p3bench/data/arrow_pool.py, corpus_files.py)."""
    if top.name == "hf_datasets":
        return [EntryStatus(top.name, "(datasets' Arrow copies of source files)", top, _tree_size(top))]
    found = []
    for path in sorted([*top.glob("*.arrow"), *top.glob("encoded/*.arrow")]):
        status = EntryStatus(top.name, path.relative_to(top).as_posix(), path, path.stat().st_size)
        if path.name.startswith("."):
            status.problem = "temporary (write unfinished)"
        elif check:
            try:
                with pa.memory_map(str(path)) as source:
                    pa.ipc.open_stream(source).read_all()
            except (pa.ArrowException, OSError) as exc:
                status.problem = f"unreadable Arrow file ({type(exc).__name__})"
        found.append(status)
    return found


def _entry_status(root: Path, kind: str, path: Path, check_sha256: bool) -> EntryStatus:
    name = path.name
    if name.startswith("."):  # .<name>.<random>.tmp: a write in progress or an interrupted one
        owner = name[1:].rsplit(".", 2)[0] if name.endswith(".tmp") else name
        status = EntryStatus(kind, name, path, _tree_size(path), problem="temporary (write unfinished)")
        status.removable = lock_is_free(root / LOCKS / kind / f"{owner}.lock")
        return status
    status = EntryStatus(kind, name, path, _tree_size(path))
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None:
        status.problem = "no valid manifest (orphaned)"
        status.removable = lock_is_free(root / LOCKS / kind / f"{name}.lock")
        return status
    status.manifest = manifest
    if not name.endswith(f"-{manifest['key']}"):
        status.problem = "manifest names another key"
    else:
        status.problem = manifest_problem(path, manifest, check_sha256)
    return status


def remove_path(path: Path) -> None:
    """Remove an entry or another path of the cache (directories whole)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


__all__ = [
    "KINDS",
    "MANIFEST",
    "CacheEntry",
    "CacheKey",
    "CacheResult",
    "CacheStore",
    "EntryStatus",
    "cache_root",
    "cached_arrays",
    "file_sha256",
    "get_or_create",
    "lock_is_free",
    "read_manifest",
    "remove_path",
    "scan",
    "store_entry",
    "texts_fingerprint",
]
