"""``p3bench cache``: list, verify and clean the cache under ``paths.cache_dir`` (docs/caches.md).

::

    p3bench cache list   [--cache-dir DIR] [--kind K] [--json]
    p3bench cache verify [--cache-dir DIR] [--kind K] [--remove]
    p3bench cache clean  [--cache-dir DIR] [--kind K] [--older-than DAYS] [--all] [--dry-run]

The default directory is ``paths.cache_dir`` of ``conf/paths/default.yaml`` (``$P3BENCH_CACHE_DIR``, else
``$P3BENCH_ROOT/.cache/p3bench``, else ``./.cache/p3bench``). ``verify`` recomputes every payload file's
sha256 against the manifest and exits 1 when it finds a corrupt or orphaned entry that it did not remove.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from p3bench.cache_store import DATA_FOLDERS, KINDS, LOCKS, EntryStatus, cache_root, remove_path, scan

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def default_cache_dir() -> Path:
    """``paths.cache_dir`` as ``conf/paths/default.yaml`` resolves it in this environment."""
    from omegaconf import OmegaConf

    from p3bench.cli import CONFIG_DIR

    paths = OmegaConf.load(CONFIG_DIR / "paths" / "default.yaml")
    return Path(str(OmegaConf.select(OmegaConf.create({"paths": paths}), "paths.cache_dir")))


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _short(value: Any, width: int = 100) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _created(status: EntryStatus) -> float:
    """When an entry was created (its manifest's time, else the path's modification time), in seconds."""
    if status.manifest is not None:
        try:
            return datetime.fromisoformat(str(status.manifest["created"])).timestamp()
        except (KeyError, ValueError):
            pass
    return status.path.stat().st_mtime


def _selected(statuses: list[EntryStatus], kind: str | None) -> list[EntryStatus]:
    return [s for s in statuses if kind is None or s.kind == kind]


def cmd_list(root: Path, kind: str | None, as_json: bool) -> int:
    statuses = _selected(scan(root), kind)
    if as_json:
        rows = [
            {"kind": s.kind, "name": s.name, "size": s.size, "problem": s.problem, "manifest": s.manifest}
            for s in statuses
        ]
        print(json.dumps({"cache_dir": str(root), "entries": rows}, indent=2, default=str))
        return EXIT_OK
    print(f"cache: {root}")
    if not statuses:
        print("no entries")
        return EXIT_OK
    totals: dict[str, list[int]] = {}
    for status in statuses:
        count_size = totals.setdefault(status.kind, [0, 0])
        count_size[0] += 1
        count_size[1] += status.size
        created = status.manifest.get("created", "") if status.manifest else ""
        state = "" if status.problem is None else f"  [{status.problem}]"
        print(f"{status.kind}/{status.name}  {human_size(status.size)}  {created}{state}")
        if status.manifest is not None:
            for part in ("model", "data", "config"):
                if status.manifest.get(part) is not None:
                    print(f"    {part}: {_short(status.manifest[part])}")
    print()
    print("kind          entries  size")
    for name, (count, size) in sorted(totals.items()):
        print(f"{name:<13} {count:>7}  {human_size(size)}")
    print(
        f"{'total':<13} {sum(c for c, _ in totals.values()):>7}  {human_size(sum(s for _, s in totals.values()))}"
    )
    return EXIT_OK


def cmd_verify(root: Path, kind: str | None, remove: bool) -> int:
    statuses = _selected(scan(root, check_sha256=True), kind)
    valid = [s for s in statuses if s.problem is None]
    outside = [s for s in statuses if s.kind == "-"]
    bad = [s for s in statuses if s.problem is not None and s.kind != "-"]
    print(f"cache: {root}")
    left = 0
    for status in bad:
        if remove and status.removable:
            remove_path(status.path)
            action = "removed"
        else:
            action = "kept (a write in progress holds its lock)" if remove else "kept"
            left += 1
        print(f"{status.kind}/{status.name}: {status.problem}: {action}")
    for status in outside:
        print(f"{status.name}: not in the cache layout (an older scheme?), {human_size(status.size)}: kept")
    print(f"{len(valid)} valid, {len(bad)} corrupt or orphaned, {len(outside)} outside the layout")
    return EXIT_PROBLEMS if left else EXIT_OK


def cmd_clean(root: Path, kind: str | None, older_than: float | None, everything: bool, dry_run: bool) -> int:
    statuses = scan(root)
    if everything and kind is None and older_than is None:
        chosen = statuses
    else:
        chosen = [s for s in _selected(statuses, kind) if s.kind != "-" or everything]
        if older_than is not None:
            cutoff = time.time() - older_than * 86400
            chosen = [s for s in chosen if _created(s) < cutoff]
    chosen = [s for s in chosen if s.removable]
    verb = "would remove" if dry_run else "removed"
    for status in chosen:
        if not dry_run:
            remove_path(status.path)
        print(f"{verb} {status.kind}/{status.name} ({human_size(status.size)})")
    if everything and kind is None and older_than is None and not dry_run:
        remove_path(root / LOCKS)
    freed = sum(s.size for s in chosen)
    print(f"{verb} {len(chosen)} entries, {human_size(freed)}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="p3bench cache", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--cache-dir", type=Path, default=None, help="default: paths.cache_dir")
        sub.add_argument(
            "--kind", choices=(*KINDS, *DATA_FOLDERS), default=None, help="only this kind of entry"
        )

    listing = commands.add_parser("list", help="kinds, entries, sizes and what each key was made of")
    common(listing)
    listing.add_argument("--json", action="store_true", help="the full manifests as JSON")
    verify = commands.add_parser("verify", help="check every payload's sha256 against its manifest")
    common(verify)
    verify.add_argument("--remove", action="store_true", help="remove corrupt and orphaned entries")
    clean = commands.add_parser("clean", help="remove entries")
    common(clean)
    clean.add_argument("--older-than", type=float, default=None, metavar="DAYS")
    clean.add_argument("--all", action="store_true", help="everything (with --kind: every entry of it)")
    clean.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    return top


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    root = cache_root(options.cache_dir if options.cache_dir is not None else default_cache_dir())
    if options.command == "list":
        return cmd_list(root, options.kind, options.json)
    if options.command == "verify":
        return cmd_verify(root, options.kind, options.remove)
    if options.older_than is not None and not options.older_than >= 0:
        print(
            f"p3bench: error: --older-than={options.older_than} is invalid: expected days >= 0",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not (options.all or options.kind or options.older_than is not None):
        print(
            "p3bench: error: cache clean removes nothing by default: expected --kind, --older-than or --all",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return cmd_clean(root, options.kind, options.older_than, options.all, options.dry_run)


__all__ = ["default_cache_dir", "main"]
