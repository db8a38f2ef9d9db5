"""No selection method but the controls reads the oracle fields (``ORACLE_META_KEYS``: the planted defects of
``synthetic_math`` and ``text_mix``). Reports and diagnostics may; each one that runs while a method selects
or trains is allowlisted here by function, with the reason.

Two checks, each of which fails when a method reads an oracle field (each is shown to fail on a planted read):

- at run time: every registered method that is not a control selects and trains for one epoch through the
  real pipeline on a small ``synthetic_math`` pool whose examples' ``meta`` raises (and records the read)
  when an oracle key is read by any means, except from inside an allowlisted function;
- in the source: in ``p3bench/methods``, ``p3bench/algorithms`` and ``p3bench/scoring``, an oracle key as a
  string, or a name that carries oracle keys or reads them (``ORACLE_META_KEYS``, ``results.composition``,
  ...), appears only inside an allowlisted function or in ``p3bench/methods/controls.py``.
"""

from __future__ import annotations

import ast
import copy
import json
import pickle
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from p3bench import preflight
from p3bench.data.example import ORACLE_META_KEYS, DatasetSplits, Example
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.methods import METHODS, is_control
from p3bench.methods.in_batch import planted_defect_masks
from p3bench.methods.simple import RandomSubset
from p3bench.results import composition
from p3bench.run import train_and_evaluate

from .conftest import REPO_ROOT, compose_config

ORACLE_KEYS = frozenset(ORACLE_META_KEYS)

#: the functions that may read oracle fields while a method runs, and why (the runtime guard's allowlist)
ALLOWED_READERS: dict[Callable[..., Any], str] = {
    planted_defect_masks: (
        "IR-DRO and MidRanking log the weight mass on planted defects (weights/mass_<defect>): a diagnostic; "
        "the weights are computed from the batch's losses only"
    ),
    composition: (
        "the selection's composition in results.json and in the selection/* logs (planted-defect counts): "
        "a report of what was selected, computed after the round is selected"
    ),
}
#: the same functions for the source check: (file under the repository, function name)
ALLOWED_IN_SOURCE = {("p3bench/methods/in_batch.py", "planted_defect_masks")}
#: the only module whose selection may read oracle fields
CONTROLS_FILE = "p3bench/methods/controls.py"
#: where selection code lives
SELECTION_PACKAGES = ("p3bench/methods", "p3bench/algorithms", "p3bench/scoring")
#: names that carry oracle keys or read oracle fields outside these packages (the report's readers)
ORACLE_NAMES = frozenset(
    {"ORACLE_META_KEYS", "composition", "defect_shares", "trained_defect_shares", "PLANTED_DEFECTS"}
)


# the runtime guard ------------------------------------------------------------------------------------------
class OracleRead(AssertionError):
    """An oracle field was read from outside the allowlisted functions."""


#: every forbidden read seen, in case a method swallows the exception
FORBIDDEN_READS: list[str] = []
_ALLOWED_CODES = frozenset(function.__code__ for function in ALLOWED_READERS)


def _reader() -> str | None:
    """Where the read comes from (the innermost frame outside the guard), or None from an allowed function."""
    frame = sys._getframe(1)
    where = None
    while frame is not None:
        if frame.f_code in _ALLOWED_CODES:
            return None
        if where is None and frame.f_code not in _GUARD_CODES:
            where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return where


def _check(key: object) -> None:
    if key in ORACLE_KEYS:
        where = _reader()
        if where is not None:
            FORBIDDEN_READS.append(f"{key!r} read at {where}")
            raise OracleRead(f"oracle field {key!r} read at {where}")


class GuardedMeta(dict):
    """An example's ``meta`` that raises :class:`OracleRead` when an oracle key is read, however it is read:
    by key (``[]``, ``get``, ``in``, ``pop``, ``setdefault``), by enumerating it (``keys``, ``values``,
    ``items``, iteration, hence ``dict(meta)``, ``{**meta}``, ``asdict``, ``json.dumps``), by comparing or
    printing it. Copies (``copy``, ``copy.copy``, ``copy.deepcopy``, pickling) stay guarded."""

    def __getitem__(self, key: Any) -> Any:
        _check(key)
        return dict.__getitem__(self, key)

    def get(self, key: Any, default: Any = None) -> Any:
        _check(key)
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        _check(key)
        return dict.__contains__(self, key)

    def pop(self, key: Any, *default: Any) -> Any:
        _check(key)
        return dict.pop(self, key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        _check(key)
        return dict.setdefault(self, key, default)

    def popitem(self) -> tuple[Any, Any]:
        _check(next(reversed(list(dict.keys(self)))))
        return dict.popitem(self)

    def __iter__(self) -> Iterator[Any]:
        for key in list(dict.keys(self)):
            _check(key)
            yield key

    def keys(self) -> list[Any]:  # type: ignore[override]
        return list(iter(self))

    def values(self) -> list[Any]:  # type: ignore[override]
        return [dict.__getitem__(self, key) for key in self.keys()]

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(key, dict.__getitem__(self, key)) for key in self.keys()]

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self.keys())

    def _read_all(self) -> None:
        for key in list(dict.keys(self)):
            _check(key)

    def __eq__(self, other: object) -> bool:
        self._read_all()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._read_all()
        return dict.__ne__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._read_all()
        return dict.__repr__(self)

    __str__ = __repr__

    def __or__(self, other: Any) -> GuardedMeta:
        self._read_all()
        return GuardedMeta({**dict(dict.items(self)), **other})

    def __ror__(self, other: Any) -> GuardedMeta:
        self._read_all()
        return GuardedMeta({**other, **dict(dict.items(self))})

    def copy(self) -> GuardedMeta:
        return GuardedMeta(dict(dict.items(self)))

    def __copy__(self) -> GuardedMeta:
        return self.copy()

    def __deepcopy__(self, memo: dict) -> GuardedMeta:
        return GuardedMeta({k: copy.deepcopy(v, memo) for k, v in dict.items(self)})

    def __reduce__(self) -> tuple[Any, ...]:
        return (GuardedMeta, (dict(dict.items(self)),))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return self.__reduce__()


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


#: the guard's own code (its methods and their comprehensions), never the reader of a read
_GUARD_CODES = frozenset(
    code
    for function in (_check, _reader, *(f for f in vars(GuardedMeta).values() if callable(f)))
    for code in _codes(function.__code__)
)


def guarded(splits: DatasetSplits) -> DatasetSplits:
    """``splits`` with every example's ``meta`` a :class:`GuardedMeta`."""

    def wrap(examples: list[Example]) -> list[Example]:
        return [replace(ex, meta=GuardedMeta(dict(ex.meta))) for ex in examples]

    return replace(
        splits, train=wrap(splits.train), validation=wrap(splits.validation), test=wrap(splits.test)
    )


@pytest.fixture(autouse=True)
def no_forbidden_reads_left() -> Iterator[None]:
    FORBIDDEN_READS.clear()
    yield
    FORBIDDEN_READS.clear()


def test_the_guard_catches_every_way_of_reading_an_oracle_field():
    """Each pattern a method might use raises (and is recorded); the level label stays readable."""
    (example,) = guarded(load_synthetic_math(n_train=1, n_val=0, n_test=0, noise_rate=0.0)).train
    meta = example.meta
    reads: dict[str, Callable[[], Any]] = {
        "meta[key]": lambda: meta["is_noisy"],
        "meta.get": lambda: meta.get("is_junk"),
        "key in meta": lambda: "dup_group" in meta,
        "meta.pop": lambda: meta.copy().pop("is_duplicate"),
        "meta.setdefault": lambda: meta.setdefault("clean_answer"),
        "dict(meta)": lambda: dict(meta),
        "{**meta}": lambda: {**meta},
        "f(**meta)": lambda: (lambda **kwargs: kwargs)(**meta),
        "meta.items()": lambda: list(meta.items()),
        "meta.values()": lambda: list(meta.values()),
        "meta.keys()": lambda: list(meta.keys()),
        "iteration": lambda: [key for key in meta],
        "meta | {}": lambda: meta | {},
        "{} | meta": lambda: {} | meta,
        "meta == other": lambda: meta == {},
        "repr(meta)": lambda: repr(meta),
        "asdict(example)": lambda: asdict(example),
        "example.to_dict()": lambda: example.to_dict(),
        "json.dumps(meta)": lambda: json.dumps(meta),
        "dict.update": lambda: {}.update(meta),
        "copy, then read": lambda: copy.deepcopy(meta)["is_noisy"],
        "pickle, then read": lambda: pickle.loads(pickle.dumps(meta))["is_noisy"],
        "str.format_map": lambda: "{is_noisy}".format_map(meta),
    }
    missed = []
    for label, read in reads.items():
        FORBIDDEN_READS.clear()
        try:
            read()
        except OracleRead:
            pass
        else:
            missed.append(label)
        if not FORBIDDEN_READS:
            missed.append(f"{label} (not recorded)")
    assert missed == []
    FORBIDDEN_READS.clear()
    assert meta["level"] == example.meta.get("level") and "type" in meta  # other fields stay readable
    assert composition([example])["n"] == 1  # an allowlisted reader reads oracle fields
    assert FORBIDDEN_READS == []


class ReadsTheOracle(RandomSubset):
    """A planted offender: a random subset that leaves out the junk (the read a method must never make)."""

    name = "reads_the_oracle"

    def select(self, ctx):
        self.pool = [ex for ex in self.pool if not ex.meta.get("is_junk")]
        return super().select(ctx)


def test_the_guard_fails_a_method_that_reads_an_oracle_field():
    splits = guarded(load_synthetic_math(n_train=60, n_val=4, n_test=4))
    from p3bench.models.tokenizer import train_local_tokenizer

    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    with pytest.raises(OracleRead, match="is_junk"):
        ReadsTheOracle(splits=splits, tokenizer=tokenizer, budget=0.5).run_selection(0)
    assert FORBIDDEN_READS and "test_oracle_isolation.py" in FORBIDDEN_READS[0]


#: per method, what keeps its run to seconds on a small pool (cheap embedders, few stand-in training steps);
#: a method not named here runs with its shipped config
SMALL_SETTINGS: dict[str, list[str]] = {
    "askllm": [
        "method.standin.steps=4",
        "method.standin.reference=[{name:synthetic_math,params:{n_train:40,n_val:0,n_test:0,seed:7}}]",
    ],
    "perplexity": ["method.standin.steps=5"],
    "loss_filters": ["method.scorer.steps=4"],
    "rho_loss": ["method.reference.steps=4"],
    "coverage": ["coverage_embedder.name=tfidf", "+coverage_embedder.kwargs.dim=16"],
    # a round every 2 steps, the domain agent on synthetic_math's problem type, TF-IDF topics, a short stand-in
    "multi_agent": [
        "method.reselect_every_n_steps=2",
        "method.agent_options.domain.field=type",
        "method.agent_options.topic.embedder=tfidf",
        "+method.agent_options.topic.embedder_kwargs.dim=16",
        "+method.agent_options.quality.scorer_options.standin.steps=5",
    ],
}
SMALL_RUN = [
    "debug=smoke",
    "test=false",
    "logger=none",
    "callbacks=none",
    "progress=false",
    "trainer.enable_progress_bar=false",
    "dataset.params.n_train=120",
    "dataset.params.n_val=20",
    "dataset.params.n_test=20",
]


def small_settings(name: str, method_config: Any) -> list[str]:
    overrides = []
    if name.startswith(("ask_llm", "askllm_")):
        overrides += SMALL_SETTINGS["askllm"]
    if name.startswith("perplexity"):
        overrides += SMALL_SETTINGS["perplexity"]
    if name in ("loss_band", "rho_loss"):
        overrides += SMALL_SETTINGS["loss_filters"]
    if name == "rho_loss":
        overrides += SMALL_SETTINGS["rho_loss"]
    if name in ("density", "semdedup", "prototypes"):
        overrides += SMALL_SETTINGS["coverage"]
    if "dpp" in method_config and method_config.dpp.enabled:
        overrides += ["method.dpp.embedder=tfidf"]
    if name.startswith("multi_agent"):
        overrides += SMALL_SETTINGS["multi_agent"]
    return overrides


NON_CONTROL_METHODS = [name for name in METHODS.names() if not is_control(name)]


@pytest.mark.slow
@pytest.mark.parametrize("method", NON_CONTROL_METHODS)
def test_no_method_reads_oracle_fields_while_it_selects_and_trains(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """One epoch of the real pipeline (every round of a dynamic method's first epoch, the in-batch weights of
    every step) over guarded examples. A fresh cache, so that no cached score or embedding skips the code
    that computes it."""
    cache = tmp_path / "cache"
    base = compose_config([*SMALL_RUN, f"method={method}"], tmp_path / "run", cache)
    cfg = compose_config(
        [*SMALL_RUN, f"method={method}", *small_settings(method, base.method)], tmp_path / "run", cache
    )
    load_splits = preflight.load_splits
    monkeypatch.setattr(preflight, "load_splits", lambda *a, **k: guarded(load_splits(*a, **k)))
    results = train_and_evaluate(cfg)
    assert FORBIDDEN_READS == []
    assert results["status"] == "ok"
    assert results["selection"]["composition"]["n"] > 0  # the allowlisted report read its oracle fields


# the source check -------------------------------------------------------------------------------------------
def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _enclosing_functions(tree: ast.AST) -> dict[int, str]:
    """For every node inside a function, the name of its outermost enclosing module-level function or
    method (``Class.method``)."""
    owner: dict[int, str] = {}

    def mark(node: ast.AST, name: str) -> None:
        for inner in ast.walk(node):
            owner[id(inner)] = name

    for node in tree.body:  # type: ignore[attr-defined]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node, node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    mark(item, f"{node.name}.{item.name}")
    return owner


def oracle_carriers(tree: ast.Module) -> set[str]:
    """Module-level names assigned from an oracle key string (``FIELDS = {"noisy": "is_noisy"}``)."""
    names: set[str] = set()
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            targets = [node.target.id]
        if targets and any(isinstance(c, ast.Constant) and c.value in ORACLE_KEYS for c in ast.walk(node)):
            names.update(targets)
    return names


def oracle_uses(source: str, path: str, carriers: frozenset[str] = frozenset()) -> list[str]:
    """Where ``source`` (the file at ``path``) uses an oracle key outside its allowlisted functions: a string
    equal to an oracle key (docstrings aside, and module-level assignments, whose names are checked where
    they are used instead), or a name that carries or reads oracle fields (:data:`ORACLE_NAMES`, the
    module's own oracle carriers, ``carriers`` of other modules, and what they are imported as)."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    owner = _enclosing_functions(tree)
    allowed = {name for file, name in ALLOWED_IN_SOURCE if file == path}
    local = oracle_carriers(tree)
    names = set(ORACLE_NAMES) | set(carriers) | local
    for node in ast.walk(tree):
        if isinstance(node, ast.alias) and node.name.split(".")[-1] in names and node.asname:
            names.add(node.asname)
    in_carrier_assignments = {
        id(inner)
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and oracle_carriers(ast.Module([node], [])) & local
        for inner in ast.walk(node)
    }
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in ORACLE_KEYS:
            if id(node) in docstrings or id(node) in in_carrier_assignments:
                continue
            what = f"the string {node.value!r}"
        elif isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Load):
            what = f"the name {node.id}"
        elif isinstance(node, ast.Attribute) and node.attr in names:
            what = f"the attribute .{node.attr}"
        else:
            continue
        function = owner.get(id(node))
        if function in allowed:
            continue
        uses.append(f"{path}:{node.lineno}: {what} in {function or 'module scope'}")
    return uses


def selection_sources() -> list[Path]:
    return sorted(
        path
        for package in SELECTION_PACKAGES
        for path in (REPO_ROOT / package).rglob("*.py")
        if path.relative_to(REPO_ROOT).as_posix() != CONTROLS_FILE
    )


def test_no_selection_code_names_an_oracle_field_outside_the_allowlist():
    sources = selection_sources()
    assert len(sources) > 20  # the packages were found
    controls = ast.parse((REPO_ROOT / CONTROLS_FILE).read_text())
    # oracle carriers of any selection module or of the controls, and the controls' reader, wherever used
    carriers = {"planted_defects"} | oracle_carriers(controls)
    carriers |= {name for path in sources for name in oracle_carriers(ast.parse(path.read_text()))}
    uses = [
        use
        for path in sources
        for use in oracle_uses(path.read_text(), path.relative_to(REPO_ROOT).as_posix(), frozenset(carriers))
    ]
    assert uses == []
    assert {"ORACLE_FIELDS", "DEFECT_FIELDS"} <= carriers  # the carriers were found


def test_the_allowlisted_readers_are_where_the_source_check_allows_them():
    """The runtime allowlist and the source allowlist name the same selection-side function."""
    selection_side = {
        (Path(f.__code__.co_filename).resolve().relative_to(REPO_ROOT).as_posix(), f.__name__)
        for f in ALLOWED_READERS
        if Path(f.__code__.co_filename).resolve().is_relative_to(REPO_ROOT / "p3bench" / "methods")
    }
    assert selection_side == ALLOWED_IN_SOURCE


@pytest.mark.parametrize(
    "planted",
    [
        'def select(self, ctx):\n    return [e for e in self.pool if not e.meta.get("is_junk")]\n',
        'class M:\n    def select(self, ctx):\n        return [e.meta["dup_group"] for e in self.pool]\n',
        "from p3bench.data.example import ORACLE_META_KEYS\n"
        "def keep(ex):\n    return not any(ex.meta.get(k) for k in ORACLE_META_KEYS)\n",
        'FIELDS = ("is_noisy",)\ndef keep(ex):\n    return not ex.meta.get(FIELDS[0])\n',
        "from p3bench import results\ndef keep(pool):\n    return results.composition(pool)\n",
        "from p3bench.results import composition\ndef keep(pool):\n    return composition(pool)\n",
    ],
    ids=["get", "getitem-in-method", "ORACLE_META_KEYS", "module-constant", "results.composition", "import"],
)
def test_the_source_check_finds_a_planted_read(planted: str):
    assert oracle_uses(planted, "p3bench/methods/planted.py") != []


def test_the_source_check_allows_the_allowlisted_diagnostic():
    path = "p3bench/methods/in_batch.py"
    assert oracle_uses((REPO_ROOT / path).read_text(), path) == []
    source = 'FIELDS = {"junk": "is_junk"}\ndef planted_defect_masks(pool):\n    return FIELDS\n'
    assert oracle_uses(source, path) == []
    assert oracle_uses(source + "def select(pool):\n    return FIELDS\n", path) != []
