"""The one cache layout (p3bench/cache_store.py, docs/caches.md): reuse and invalidation, concurrent
writers, interrupted writes, and the ``p3bench cache`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p3bench.cache_store import (
    MANIFEST,
    CacheKey,
    CacheStore,
    cache_root,
    cached_arrays,
    file_sha256,
    get_or_create,
    lock_is_free,
    scan,
    texts_fingerprint,
)
from p3bench.embeddings import Embedder, cached_embeddings, embeddings_cache_path
from p3bench.scoring.cache import cached_scores, cached_scores_counted, scores_cache_path

TEXTS = ["the cat sat", "a dog ran far", "numbers 1 2 3", "the cat sat again", "short"]


class LengthScorer:
    """A scorer whose config (``scale``) enters its fingerprint, counting its passes."""

    name = "lengths"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.calls = 0

    @property
    def fingerprint(self) -> str:
        return f"lengths|scale={self.scale}"

    def score_texts(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.array([self.scale * len(t) for t in texts], dtype=np.float64)

    def count_forward_tokens(self, texts: list[str]) -> int:
        return sum(len(t.split()) for t in texts)


class LetterEmbedder(Embedder):
    """Letter counts over the first ``dim`` letters, unit rows; counts its passes."""

    name = "letters"
    calls = 0

    def __init__(self, dim: int = 4) -> None:
        self.dim = dim

    @property
    def fingerprint(self) -> str:
        return f"letters|dim={self.dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        type(self).calls += 1
        rows = np.array([[t.count(chr(97 + i)) + 1 for i in range(self.dim)] for t in texts], np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _entries(root: Path, kind: str) -> list[Path]:
    folder = root / kind
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


# -- reuse and invalidation --------------------------------------------------------------------------------


def test_a_second_run_computes_nothing_and_a_change_of_data_or_config_misses(tmp_path: Path) -> None:
    scorer = LengthScorer()
    first = cached_scores_counted(scorer, TEXTS, tmp_path, name="lengths")
    second = cached_scores_counted(LengthScorer(), TEXTS, tmp_path, name="lengths")  # a fresh "run"
    assert scorer.calls == 1 and not first.from_cache and second.from_cache
    np.testing.assert_array_equal(first.scores, second.scores)
    assert first.forward_tokens == second.forward_tokens == scorer.count_forward_tokens(TEXTS) > 0
    # the caller's "scores" folder stands for the cache's root: the same entry
    assert cached_scores_counted(LengthScorer(), TEXTS, tmp_path / "scores", name="lengths").from_cache
    # other data, the same data in another order, another scorer config: each a miss, recomputed
    other = LengthScorer()
    cached_scores(other, [*TEXTS, "one more"], tmp_path, name="lengths")
    cached_scores(other, TEXTS[::-1], tmp_path, name="lengths")
    assert other.calls == 2
    scaled = LengthScorer(scale=2.0)
    np.testing.assert_array_equal(cached_scores(scaled, TEXTS, tmp_path, name="lengths"), 2 * first.scores)
    assert scaled.calls == 1
    assert len(_entries(tmp_path, "scores")) == 4
    manifest = json.loads(
        (scores_cache_path(scorer, TEXTS, tmp_path, name="lengths").parent / MANIFEST).read_text()
    )
    assert manifest["kind"] == "scores" and manifest["model"] == scorer.fingerprint
    assert manifest["data"] == texts_fingerprint(TEXTS) and manifest["data"]["n"] == len(TEXTS)
    (payload,) = manifest["files"]
    path = scores_cache_path(scorer, TEXTS, tmp_path, name="lengths")
    assert manifest["files"][payload] == {"size": path.stat().st_size, "sha256": file_sha256(path)}


def test_embeddings_entry_is_reused_and_invalidated(tmp_path: Path) -> None:
    LetterEmbedder.calls = 0
    first = cached_embeddings(LetterEmbedder(dim=4), TEXTS, tmp_path)
    second = cached_embeddings(LetterEmbedder(dim=4), TEXTS, tmp_path)
    assert LetterEmbedder.calls == 1
    np.testing.assert_array_equal(first, second)
    cached_embeddings(LetterEmbedder(dim=3), TEXTS, tmp_path)  # another config: another fingerprint
    cached_embeddings(LetterEmbedder(dim=4), TEXTS[:-1], tmp_path)  # other data
    assert LetterEmbedder.calls == 3
    assert embeddings_cache_path(LetterEmbedder(dim=4), TEXTS, tmp_path).parent == tmp_path / "embeddings"


def test_cached_arrays_serve_a_clustering_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def kmeans() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"labels": np.array([0, 1, 1]), "centroids": np.eye(2, dtype=np.float32)}

    key = CacheKey(
        "clusterings", "kmeans", model={"algorithm": "sklearn"}, data={"sha256": "ab"}, config={"k": 2}
    )
    first, hit = cached_arrays(tmp_path, key, kmeans)
    again, hit_again = cached_arrays(tmp_path, key, kmeans)
    assert (hit, hit_again) == (False, True) and len(calls) == 1
    for name in ("labels", "centroids"):
        np.testing.assert_array_equal(first[name], again[name])
    assert again["centroids"].dtype == np.float32
    other = CacheKey(
        "clusterings", "kmeans", model={"algorithm": "sklearn"}, data={"sha256": "ab"}, config={"k": 3}
    )
    cached_arrays(tmp_path, other, kmeans)
    assert len(calls) == 2


def test_keys_are_deterministic_and_name_their_parts() -> None:
    key = CacheKey("clusterings", "kmeans", model={"embeddings": "abc"}, data={"n": 3}, config={"k": 2})
    again = CacheKey(
        "clusterings", "other-label", model={"embeddings": "abc"}, data={"n": 3}, config={"k": 2}
    )
    assert key.digest == again.digest and key.name != again.name  # the label is not hashed
    assert key.digest != CacheKey("clusterings", "kmeans", {"embeddings": "abc"}, {"n": 3}, {"k": 3}).digest
    assert key.digest != CacheKey("embeddings", "kmeans", {"embeddings": "abc"}, {"n": 3}, {"k": 2}).digest
    assert texts_fingerprint(["x", "y"]) != texts_fingerprint(["x\x00y"])
    with pytest.raises(ValueError, match="cache kind 'blobs' is unknown"):
        CacheKey("blobs", "x", None, None)
    assert cache_root("/c/scores") == Path("/c") and cache_root("/c/icl_utility") == Path("/c")
    assert cache_root("/c") == Path("/c")


# -- concurrent writers ------------------------------------------------------------------------------------

WRITER = r"""
import json, os, sys, time
from pathlib import Path
from p3bench.cache_store import CacheKey, CacheStore, get_or_create

root, me, n_writers, kill = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "kill"
(root / f"ready-{me}").touch()
while len(list(root.glob("ready-*"))) < n_writers:  # start together
    time.sleep(0.01)
entry = CacheStore(root / "cache").entry(CacheKey("clusterings", "race", "model", {"n": 3}, {"k": 2}))

def load(directory, manifest):
    return (directory / "labels.json").read_text()

def build(directory):
    with open(root / "calls.log", "a") as log:
        log.write(me + "\n")
    (directory / "labels.json").write_text(json.dumps([0, 1, 1]))
    if kill:
        os._exit(9)  # killed between the payload and the manifest
    time.sleep(0.5)  # hold the lock long enough for the other writers to queue on it
    return (directory / "labels.json").read_text(), {"writer": me}

result = get_or_create(entry, load, build)
print(json.dumps({"value": result.value, "hit": result.hit}))
"""


def _writers(tmp_path: Path, n: int, kill: bool = False) -> list[subprocess.CompletedProcess[str]]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(i), str(n), "kill" if kill else "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in processes]


def test_writers_racing_on_one_key_compute_once_and_leave_one_valid_entry(tmp_path: Path) -> None:
    done = _writers(tmp_path, 3)
    assert all(p.returncode == 0 for p in done), [p.stderr for p in done]
    results = [json.loads(p.stdout) for p in done]
    assert {r["value"] for r in results} == {"[0, 1, 1]"}
    assert sorted(r["hit"] for r in results) == [False, True, True]
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 1  # the lock made the others read
    statuses = scan(tmp_path / "cache", check_sha256=True)
    assert [(s.kind, s.problem) for s in statuses] == [("clusterings", None)]


def test_threads_racing_on_one_key_compute_once(tmp_path: Path) -> None:
    entry = CacheStore(tmp_path).entry(CacheKey("scores", "threads", "m", {"n": 1}))
    calls: list[int] = []
    barrier = threading.Barrier(4)
    values: list[Any] = []

    def build(directory: Path) -> tuple[str, dict[str, Any]]:
        calls.append(1)
        (directory / "value.txt").write_text("42")
        time.sleep(0.3)  # hold the lock while the other threads queue on it
        return "42", {}

    def worker() -> None:
        barrier.wait()
        values.append(get_or_create(entry, lambda d, m: (d / "value.txt").read_text(), build).value)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert values == ["42"] * 4 and len(calls) == 1


def test_inside_a_process_group_a_collective_computation_runs_outside_the_lock(tmp_path: Path) -> None:
    """A computation that runs collectives (``collective=True``): holding the lock through it would
    deadlock the group; any other computes under the lock, so a group's processes compute it once."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        entry = CacheStore(tmp_path).entry(CacheKey("kernels", "group", "m", {"n": 1}))
        held: list[bool] = []

        def build(directory: Path) -> tuple[str, dict[str, Any]]:
            held.append(not lock_is_free(entry.lock_path))
            dist.barrier()  # a collective inside the computation
            (directory / "value.txt").write_text("7")
            return "7", {}

        first = get_or_create(entry, lambda d, m: (d / "value.txt").read_text(), build, collective=True)
        second = get_or_create(entry, lambda d, m: (d / "value.txt").read_text(), build, collective=True)
        plain = CacheStore(tmp_path).entry(CacheKey("weights", "group", "m", {"n": 2}))

        def build_plain(directory: Path) -> tuple[str, dict[str, Any]]:
            held.append(not lock_is_free(plain.lock_path))
            (directory / "value.txt").write_text("8")
            return "8", {}

        third = get_or_create(plain, lambda d, m: (d / "value.txt").read_text(), build_plain)
    finally:
        dist.destroy_process_group()
    assert held == [False, True] and (first.hit, second.hit) == (False, True) and second.value == "7"
    assert third.value == "8" and not third.hit


# -- interrupted writes ------------------------------------------------------------------------------------


def test_a_writer_killed_before_its_manifest_leaves_a_miss(tmp_path: Path) -> None:
    (killed,) = _writers(tmp_path, 1, kill=True)
    assert killed.returncode == 9
    root = tmp_path / "cache"
    assert _entries(root, "clusterings") == []  # no entry, only the temporary directory
    (leftover,) = scan(root)
    assert leftover.problem == "temporary (write unfinished)" and leftover.removable
    (tmp_path / "calls.log").unlink()
    for ready in tmp_path.glob("ready-*"):
        ready.unlink()
    (again,) = _writers(tmp_path, 1)
    assert json.loads(again.stdout) == {"value": "[0, 1, 1]", "hit": False}  # recomputed


def test_partial_entries_are_misses_not_corrupt_reads(tmp_path: Path) -> None:
    scorer = LengthScorer()
    expected = cached_scores(scorer, TEXTS, tmp_path)
    path = scores_cache_path(scorer, TEXTS, tmp_path)
    # a payload without a manifest (written by hand where the entry goes): a miss, rebuilt
    (path.parent / MANIFEST).unlink()
    np.testing.assert_array_equal(cached_scores(scorer, TEXTS, tmp_path), expected)
    assert scorer.calls == 2 and (path.parent / MANIFEST).is_file()
    # a truncated payload under a complete manifest: a miss
    path.write_bytes(path.read_bytes()[:-8])
    np.testing.assert_array_equal(cached_scores(scorer, TEXTS, tmp_path), expected)
    assert scorer.calls == 3
    # a manifest cut short: a miss
    manifest = path.parent / MANIFEST
    manifest.write_text(manifest.read_text()[:40])
    np.testing.assert_array_equal(cached_scores(scorer, TEXTS, tmp_path), expected)
    assert scorer.calls == 4
    assert cached_scores(scorer, TEXTS, tmp_path) is not None and scorer.calls == 4


# -- the command -------------------------------------------------------------------------------------------


def _cache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p3bench.cli", "cache", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cache_command_lists_verifies_and_cleans(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    scorer = LengthScorer()
    cached_scores(scorer, TEXTS, cache)
    cached_embeddings(LetterEmbedder(dim=3), TEXTS, cache)
    (cache / "old-scheme.npy").write_bytes(b"left by an older version")

    listed = _cache("list", env={"P3BENCH_CACHE_DIR": str(cache)})  # the default is paths.cache_dir
    assert listed.returncode == 0, listed.stderr
    assert f"cache: {cache}" in listed.stdout
    assert "scores/lengths-" in listed.stdout and "embeddings/letters-" in listed.stdout
    assert f"model: {json.dumps(scorer.fingerprint)}" in listed.stdout
    as_json = json.loads(_cache("list", "--cache-dir", str(cache), "--json").stdout)
    kinds = sorted(e["kind"] for e in as_json["entries"])
    assert kinds == ["-", "embeddings", "scores"]

    verified = _cache("verify", "--cache-dir", str(cache))
    assert verified.returncode == 0, verified.stdout
    assert "2 valid, 0 corrupt or orphaned, 1 outside the layout" in verified.stdout

    payload = scores_cache_path(scorer, TEXTS, cache)
    damaged = bytearray(payload.read_bytes())
    damaged[-1] ^= 0xFF  # same size: only the sha256 tells
    payload.write_bytes(bytes(damaged))
    verified = _cache("verify", "--cache-dir", str(cache))
    assert verified.returncode == 1
    assert f"scores/{payload.parent.name}: scores.npy does not match its sha256: kept" in verified.stdout
    removed = _cache("verify", "--cache-dir", str(cache), "--remove")
    assert removed.returncode == 0 and "removed" in removed.stdout and not payload.parent.exists()

    assert _cache("clean", "--cache-dir", str(cache)).returncode == 2  # removes nothing by default
    assert _cache("clean", "--cache-dir", str(cache), "--older-than", "1").stdout.endswith(
        "removed 0 entries, 0 B\n"
    )
    dry = _cache("clean", "--cache-dir", str(cache), "--kind", "embeddings", "--dry-run")
    assert "would remove embeddings/letters-" in dry.stdout and len(_entries(cache, "embeddings")) == 1
    _cache("clean", "--cache-dir", str(cache), "--kind", "embeddings")
    assert _entries(cache, "embeddings") == [] and (cache / "old-scheme.npy").exists()
    everything = _cache("clean", "--cache-dir", str(cache), "--all")
    assert everything.returncode == 0 and "removed 1 entries" in everything.stdout
    assert scan(cache) == []


def test_pool_files_are_listed_and_a_truncated_one_fails_verification(tmp_path: Path) -> None:
    from p3bench.data.arrow_pool import write_arrow_pool
    from p3bench.data.example import Example

    good = write_arrow_pool([Example(f"e{i}", "", "text " * 50) for i in range(300)], tmp_path / "pools")
    bad = good.with_name("0" * 64 + ".arrow")
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    statuses = {s.name: s for s in scan(tmp_path, check_sha256=True)}
    assert statuses[good.name].kind == "pools" and statuses[good.name].problem is None
    assert statuses[bad.name].problem.startswith("unreadable Arrow file")
    assert {s.name: s.problem for s in scan(tmp_path)}[bad.name] is None  # only verify reads files whole
