"""A run's selection file: JSON lines up to a size, Parquet above it, and one reader for both.

Each row is one (round, selected id) with its score and weight (:func:`p3bench.results.selection_rows`).
``selection.jsonl`` is the format of every run up to ``pool.selection_parquet_above`` rows; above that the
same rows go to ``selection.parquet`` (columns ``round`` int64, ``id`` string, ``score`` float64 or null,
``weight`` float64), which a million-row selection writes and reads in a fraction of the time and space.
A run directory holds one of the two: writing one removes the other (a resumed run with another size
leaves no stale file behind). Both are written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from p3bench.utils.io import atomic_output, atomic_write_jsonl

SELECTION_JSONL = "selection.jsonl"
SELECTION_PARQUET = "selection.parquet"
#: the default of ``pool.selection_parquet_above``: selections of more rows are written as Parquet
PARQUET_ABOVE = 100_000

SELECTION_SCHEMA = pa.schema(
    [("round", pa.int64()), ("id", pa.string()), ("score", pa.float64()), ("weight", pa.float64())]
)


def write_selection(
    output_dir: str | Path, rows: list[dict[str, Any]], parquet_above: int = PARQUET_ABOVE
) -> Path:
    """Write ``rows`` as ``selection.jsonl``, or as ``selection.parquet`` when there are more than
    ``parquet_above`` of them; remove the other file if a previous write left one. Returns the path."""
    output_dir = Path(output_dir)
    if len(rows) > parquet_above:
        path, other = output_dir / SELECTION_PARQUET, output_dir / SELECTION_JSONL
        table = pa.Table.from_pylist(
            [
                {
                    "round": int(row["round"]),
                    "id": str(row["id"]),
                    "score": None if row.get("score") is None else float(row["score"]),
                    "weight": float(row["weight"]),
                }
                for row in rows
            ],
            schema=SELECTION_SCHEMA,
        )
        with atomic_output(path, "wb") as handle:
            pq.write_table(table, handle)
    else:
        path, other = output_dir / SELECTION_JSONL, output_dir / SELECTION_PARQUET
        atomic_write_jsonl(path, rows)
    other.unlink(missing_ok=True)
    return path


def selection_path(run_dir: str | Path) -> Path | None:
    """The run's selection file (Parquet if there is one, else JSON lines), or None when it has neither."""
    run_dir = Path(run_dir)
    for name in (SELECTION_PARQUET, SELECTION_JSONL):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def read_selection(run_dir: str | Path) -> list[dict[str, Any]]:
    """The selection rows of a run directory from whichever file it has; raises ``FileNotFoundError``
    when it has none and ``ValueError`` when the file does not parse."""
    path = selection_path(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has neither {SELECTION_PARQUET} nor {SELECTION_JSONL}")
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{path} is not a readable Parquet selection: {exc}") from exc
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
