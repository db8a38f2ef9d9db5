"""Selection diagnostics of grouped runs: what each method selected (by difficulty level, or by source domain
on text corpora), how a dynamic method's selection moved over rounds, how much methods' selections overlap,
and, on data with planted defects, how much of the training fell on them. Oracle fields are read here, for
reporting only; no method reads them."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from typing import Any

from p3bench.report.aggregate import Group, Section
from p3bench.results import PLANTED_DEFECTS, trained_defect_shares
from p3bench.results import defect_shares as composition_defect_shares

CATEGORY_LABELS = {"level": "Difficulty level", "domain": "Source domain"}


def category_kind(section: Section) -> str | None:
    """``level`` when the pool has difficulty levels, ``domain`` for a text corpus with sources, else None."""
    for group in section.groups:
        selection = group.runs[0].results["selection"]
        pool = selection.get("pool_composition") or selection.get("composition", {})
        levels = pool.get("per_level", {})
        if levels and set(levels) != {"None"}:
            return "level"
        if pool.get("per_domain"):
            return "domain"
    return None


def normalised(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def mean_shares(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in dicts for k in d})
    return {k: statistics.fmean(d.get(k, 0.0) for d in dicts) for k in keys} if dicts else {}


def selected_shares(group: Group, kind: str) -> dict[str, float]:
    """Share of the distinct selected examples in each level or domain, averaged over the group's runs."""
    key = f"per_{kind}"
    shares = [
        normalised((r.results["selection"].get("composition") or {}).get(key) or {}) for r in group.runs
    ]
    return mean_shares([s for s in shares if s])


def pool_shares(section: Section, kind: str) -> dict[str, float] | None:
    for group in section.groups:
        pool = group.runs[0].results["selection"].get("pool_composition")
        if pool and pool.get(f"per_{kind}"):
            return normalised(pool[f"per_{kind}"])
    return None


def is_dynamic(group: Group) -> bool:
    return any(len(r.results["selection"].get("rounds") or []) > 1 for r in group.runs)


def round_counts(group: Group, kind: str) -> list[dict[str, Any]]:
    """Per round, the mean over the group's runs of the examples selected in each level or domain (runs
    record each round's composition; P3's own per-level diagnostics serve runs written before that)."""
    per_round: dict[int, list[dict[str, float]]] = defaultdict(list)
    for run in group.runs:
        for record in run.results["selection"].get("rounds") or []:
            counts = (record.get("composition") or {}).get(f"per_{kind}")
            if counts is None and kind == "level":
                counts = (record.get("diagnostics") or {}).get("per_level")
            if counts:
                per_round[int(record["round"])].append({str(k): float(v) for k, v in counts.items()})
    return [{"round": k, "counts": mean_shares(v)} for k, v in sorted(per_round.items())]


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else math.nan


def overlap_matrix(groups: list[Group]) -> list[list[float]]:
    """Jaccard index of the distinct selected ids of each pair of groups, averaged over the seeds both have
    (NaN when they share no seed). Runs whose selection file is missing or does not match results.json are
    left out (:attr:`RunRecord.selected_ids` is None for them)."""
    by_seed = [{run.seed: run.selected_ids for run in g.runs if run.selected_ids is not None} for g in groups]
    matrix = [[math.nan] * len(groups) for _ in groups]
    for i, j in itertools.product(range(len(groups)), repeat=2):
        seeds = sorted(set(by_seed[i]) & set(by_seed[j]), key=str)
        values = [jaccard(by_seed[i][s], by_seed[j][s]) for s in seeds]
        values = [v for v in values if not math.isnan(v)]
        if values:
            matrix[i][j] = statistics.fmean(values)
    return matrix


def defect_shares(group: Group) -> dict[str, float]:
    """Share of the training exposures on planted defects, averaged over the group's runs."""
    shares = [trained_defect_shares(r.results) for r in group.runs]
    return mean_shares([s for s in shares if s])


def pool_defect_shares(section: Section) -> dict[str, float] | None:
    for group in section.groups:
        pool = group.runs[0].results["selection"].get("pool_composition") or {}
        if pool.get("n") and "noisy" in pool:
            return composition_defect_shares(pool)
    return None


def planted_kinds(section: Section) -> list[str]:
    """The defect kinds the section's pool has (all the kinds runs report when the pool's counts are not
    recorded), in a fixed order: a corpus without planted label noise gets no noisy column."""
    reported = {d for g in section.groups for d in defect_shares(g)}
    pool = pool_defect_shares(section)
    return [d for d in PLANTED_DEFECTS if d in reported and (pool is None or pool.get(d, 0.0) > 0)]
