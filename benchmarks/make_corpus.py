"""Write a corpus of short documents as Parquet shards, for the pool-at-scale runs (``dataset=corpus_files``).

The local Project Gutenberg books (``../shared/data/gutenberg``, 64 novels, the eBook header and footer
stripped) are cut into documents of at most ``--chunk-words`` words along paragraph boundaries
(:func:`p3bench.data.text.chunk_text`); the first ``--n-docs`` documents in file-name order are written, in
shards of ``--shard-rows`` (chunks without a letter or digit, the books' separator lines, left out), with columns ``id`` (``<book>-<k>``), ``text`` and ``book`` (the title).
Each shard is written under a temporary name and renamed into place.

    python benchmarks/make_corpus.py --out /tmp/corpus_1m --n-docs 1000000 --chunk-words 10
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from p3bench.data.text import chunk_text, manifest_titles, read_text, strip_gutenberg
from p3bench.utils.io import atomic_output

ROOT = Path(__file__).resolve().parents[1]
#: a document must have a word (letters or digits): the books' separator lines ("* * *") are left out
WORD = re.compile(r"[^\W_]")


def documents(directory: Path, chunk_words: int):
    titles = manifest_titles(directory)
    for path in sorted(directory.glob("*.txt")):
        text, _ = read_text(path)
        title = titles.get(path.name, path.stem)
        for k, chunk in enumerate(chunk_text(strip_gutenberg(text, str(path)), chunk_words)):
            if WORD.search(chunk):  # not a separator line such as "* * *"
                yield {"id": f"{path.stem}-{k}", "text": chunk, "book": title}


def write_corpus(directory: Path, out: Path, n_docs: int, chunk_words: int, shard_rows: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    written = shard = 0

    def flush() -> None:
        nonlocal rows, shard
        if not rows:
            return
        with atomic_output(out / f"part-{shard:05d}.parquet", "wb") as handle:
            pq.write_table(pa.Table.from_pylist(rows), handle)
        rows, shard = [], shard + 1

    for doc in documents(directory, chunk_words):
        rows.append(doc)
        written += 1
        if len(rows) == shard_rows:
            flush()
        if written == n_docs:
            break
    flush()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gutenberg", type=Path, default=ROOT.parent / "shared" / "data" / "gutenberg")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-docs", type=int, default=1_000_000)
    parser.add_argument("--chunk-words", type=int, default=10)
    parser.add_argument("--shard-rows", type=int, default=250_000)
    args = parser.parse_args()
    start = time.perf_counter()
    n = write_corpus(args.gutenberg, args.out, args.n_docs, args.chunk_words, args.shard_rows)
    print(f"{n} documents in {args.out} ({time.perf_counter() - start:.1f} s)")
    if n < args.n_docs:
        print(f"the books hold only {n} documents of at most {args.chunk_words} words: lower --chunk-words")


if __name__ == "__main__":
    main()
