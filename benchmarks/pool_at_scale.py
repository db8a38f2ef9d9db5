"""Selection on a pool on disk at scale: each method end to end through the ``p3bench`` command, with the
wall time and peak memory of the run, on a corpus of short documents (``benchmarks/make_corpus.py``).

Each run is ``p3bench dataset=corpus_files`` (the train pool an Arrow file, memory-mapped and read lazily)
with the tiny model: select ``--budget`` documents, train one epoch on them (at most ``--train-batches``
batches), evaluate on the held-out documents. Peak memory is the largest resident set of the run's
process (``/usr/bin/time``'s maximum RSS: what the kernel charged it, the pool file's pages it touched
included); the table also gives it less the pool's embeddings (``N x d`` float32), which the coverage
samplers must hold. The embedding stage runs first in a process of its own (its time and peak reported
apart), filling the embedding cache the samplers then read, so the runs measure selection, not embedding.
The results' own figures come beside it: the selection's seconds, the ids' sha256.

    python benchmarks/make_corpus.py --out /tmp/corpus_1m --n-docs 1000000
    python benchmarks/pool_at_scale.py --corpus /tmp/corpus_1m --methods random density semdedup prototypes
    python benchmarks/pool_at_scale.py --corpus /tmp/corpus_1m --max-train 100000 --methods p3 --budget 1000

The embedder is ``tfidf`` (word unigrams, the 131,072 most frequent, reduced to 384 dimensions:
the coverage samplers' shipped dimension) because a transformer embedder over a million documents takes
hours on a CPU; ``--embedder minilm`` runs the shipped one (a GPU at this scale).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measured(command: list[str], what: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``command`` under ``/usr/bin/time`` and return its wall seconds and peak RSS in GB; a failure
    stops the benchmark naming ``what``."""
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True, env=env, cwd=ROOT
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return wall, int(done.stderr.strip().splitlines()[-1]) / 1e6


def run_method(args: argparse.Namespace, method: str, out: Path) -> dict:
    run_dir = out / f"{method}_n{args.max_train or 'all'}"
    command = [
        sys.executable,
        "-m",
        "p3bench",
        "dataset=corpus_files",
        f"dataset.params.data_files={args.corpus}/*.parquet",
        f"dataset.params.val_size={args.held_out}",
        f"dataset.params.test_size={args.held_out}",
        f"dataset.params.max_train={'null' if args.max_train is None else args.max_train}",
        "model=tiny",
        f"method={method}",
        f"budget={args.budget}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.train_batches}",
        f"coverage_embedder.name={args.embedder}",
        "progress=false",
        "trainer.enable_progress_bar=false",
        f"pool.num_proc={args.num_proc}",
        f"hydra.run.dir={run_dir}",
    ]
    command += [
        f"+coverage_embedder.kwargs.{key}={json.dumps(value)}" for key, value in embedder_kwargs(args).items()
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    wall, peak_gb = measured(command, method, env)
    results = json.loads((run_dir / "results.json").read_text())
    selection = results["selection"]
    n_pool = selection["pool_size"]
    embeddings_gb = n_pool * 384 * 4 / 1e9 if method in ("density", "semdedup", "prototypes") else 0.0
    return {
        "method": method,
        "pool": n_pool,
        "budget": args.budget,
        "selected": selection["n_selected"],
        "ids_sha256": selection["ids_sha256"],
        "wall_s": round(wall, 1),
        "selection_s": round(results["compute"]["seconds"].get("selection", float("nan")), 1),
        "peak_rss_gb": round(peak_gb, 2),
        "embeddings_gb": round(embeddings_gb, 2),
        "peak_beyond_embeddings_gb": round(peak_gb - embeddings_gb, 2),
        "load_1min": round(os.getloadavg()[0], 1),
    }


def embed_pool(args: argparse.Namespace) -> None:
    """The embedding stage alone (run in its own process by :func:`measure_embedding`): the pool's texts
    through the coverage embedder into the embedding cache, under the key the samplers look up (an ``lm``
    pool's text is its target), so that the runs after it measure selection without embedding."""
    from p3bench.data.corpus_files import load_corpus_files
    from p3bench.embeddings import build_embedder, cached_embeddings_counted

    splits = load_corpus_files(
        f"{args.corpus}/*.parquet",
        val_size=args.held_out,
        test_size=args.held_out,
        max_train=args.max_train,
        cache_dir=os.environ["P3BENCH_CACHE_DIR"],
    )
    embedder = build_embedder(args.embedder, **embedder_kwargs(args), progress=False)
    vectors, _ = cached_embeddings_counted(
        embedder, splits.train.column("target"), os.environ["P3BENCH_CACHE_DIR"]
    )
    print(f"embedded {vectors.shape}")


def embedder_kwargs(args: argparse.Namespace) -> dict:
    # word unigrams (bigrams would multiply the vocabulary TfidfVectorizer builds before it keeps the most
    # frequent), the 131,072 most frequent, reduced to 384 dimensions
    return {"dim": 384, "max_features": 131072, "ngram_range": [1, 1]} if args.embedder == "tfidf" else {}


def measure_embedding(args: argparse.Namespace) -> dict:
    wall, peak_gb = measured([sys.executable, __file__, "--embed-only", *sys.argv[1:]], "embedding")
    return {
        "stage": f"embed ({args.embedder})",
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(peak_gb, 2),
        "load_1min": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["random", "density", "semdedup", "prototypes"])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--train-batches", type=int, default=100)
    parser.add_argument("--embedder", default="tfidf")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pool_at_scale"))
    parser.add_argument("--embed-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embed_only:
        return embed_pool(args)
    args.out.mkdir(parents=True, exist_ok=True)
    embedding = None
    if any(m in ("density", "semdedup", "prototypes") for m in args.methods):
        embedding = measure_embedding(args)
        print(json.dumps(embedding))
    rows = [run_method(args, method, args.out) for method in args.methods]
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in header) + " |")
    (args.out / "pool_at_scale.json").write_text(
        json.dumps({"embedding": embedding, "runs": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
