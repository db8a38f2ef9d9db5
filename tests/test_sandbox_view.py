"""Programs cannot read the answers: in every level with a mount namespace the program sees only the
interpreter, its libraries and the system's, read-only, and its own working directory; not a file of
expected outputs beside the test, not the repository, not the project's data, not the user's home. Where
the sandbox cannot read this environment's site-packages, the isolation report says so."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from p3bench.execution.apps import check_program

from .sandbox_levels import REPO_ROOT, code_execution_on, level_sandbox  # noqa: F401

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux"),
    pytest.mark.usefixtures("code_execution_on"),
]

SHARED = (REPO_ROOT / ".." / "shared").resolve()

# Looks its answer up in a JSONL file of expected outputs, as a program could with the dataset on disk.
LOOKUP = """import json
key = input().strip()
try:
    with open({path!r}) as answers:
        print(next(row["output"] for row in map(json.loads, answers) if row["input"] == key))
except OSError as err:
    print("unreadable", type(err).__name__)
"""


@pytest.fixture(params=["auto", "bwrap", "namespaces", "userns"])
def hiding_sandbox(request):
    """Each level with a mount namespace that works here."""
    sandbox = level_sandbox(request.param)
    if not sandbox.isolation.namespaces:
        pytest.skip(f"isolation {sandbox.isolation.mode!r} has no mount namespace: it hides nothing")
    return sandbox


def test_a_program_cannot_look_its_answer_up(hiding_sandbox):
    secret = f"answer-{uuid.uuid4().hex}"
    answers = Path(__file__).parent / f".answers-{secret[-12:]}.jsonl"  # beside the test, world-readable
    try:
        answers.write_text(json.dumps({"input": "7", "output": secret}) + "\n")
    except OSError as err:
        pytest.skip(f"cannot write beside the test: {err}")
    os.chmod(answers, 0o644)
    try:
        result = check_program(
            LOOKUP.format(path=str(answers)),
            {"inputs": ["7"], "outputs": [secret]},
            sandbox=hiding_sandbox,
            per_test_timeout_s=5.0,
        )
    finally:
        answers.unlink()
    verdict = result.verdicts[0]
    assert verdict.verdict == "fail", verdict
    assert "unreadable FileNotFoundError" in verdict.detail


def _shown(sandbox) -> list[str]:
    return [entry.split(" -> ")[0] for entry in sandbox.report()["file_system"]["shown_read_only"]]


def _allowed_children(directory: Path, shown: list[str]) -> set[str]:
    """The entries of ``directory`` the view may hold: the first step towards each path it shows."""
    allowed = set()
    for path in shown:
        relative = os.path.relpath(path, directory)
        if not relative.startswith(".."):
            allowed.add(relative.split(os.sep)[0])
    return allowed


def test_the_repository_data_and_home_are_invisible(hiding_sandbox):
    files = [REPO_ROOT / "pyproject.toml", Path(__file__), REPO_ROOT / "p3bench" / "__init__.py", SHARED]
    directories = [REPO_ROOT, REPO_ROOT / "tests", REPO_ROOT.parent, Path.home(), Path("/etc"), Path("/var")]
    program = (
        "import json, os\n"
        f"files = {[str(p) for p in files]!r}\n"
        f"directories = {[str(p) for p in directories]!r}\n"
        "seen = {p: os.path.exists(p) for p in files}\n"
        "listed = {d: sorted(os.listdir(d)) if os.path.isdir(d) else [] for d in directories}\n"
        "print(json.dumps({'seen': seen, 'listed': listed}))\n"
    )
    result = hiding_sandbox.run_python(program)
    assert result.ok, result.stderr
    answer = json.loads(result.stdout)
    assert not any(answer["seen"].values()), answer["seen"]
    shown = _shown(hiding_sandbox)
    for directory, listing in answer["listed"].items():
        assert set(listing) <= _allowed_children(Path(directory), shown), (directory, listing)


def test_the_view_is_read_only(hiding_sandbox):
    targets = [*_shown(hiding_sandbox), hiding_sandbox.python]
    program = (
        "import os\nwritable = []\n"
        f"for path in {targets!r}:\n"
        "    probe = os.path.join(path, 'p3bench-probe') if os.path.isdir(path) else path\n"
        "    try:\n        open(probe, 'a').close()\n        writable.append(probe)\n"
        "    except OSError:\n        pass\n"
        "print(writable)\n"
    )
    result = hiding_sandbox.run_python(program)
    assert result.ok and result.stdout == b"[]\n", (result.stdout, result.stderr)


def test_report_names_site_packages_the_sandbox_cannot_read(monkeypatch):
    """Where the sandbox user cannot read this environment (a virtualenv under a private home), programs
    lose its packages; the report must say so, naming the paths and numpy."""
    from p3bench.execution import isolation as isolation_module

    answer = {"uid": os.getuid(), "version": "3.11.0", "readable": [], "numpy": False}
    monkeypatch.setattr(isolation_module, "_probe", lambda candidate, limits: (answer, ""))
    report = isolation_module.detect_isolation.__wrapped__("rlimits", None, False).report()
    missing = report["packages"]["MISSING"]
    assert "numpy" in missing and "\n" not in missing
    assert all(path in missing for path in isolation_module._host_site_paths())
    assert any("not readable" in note for note in report["notes"])


def test_a_prefix_holding_the_project_shows_only_its_interpreter(tmp_path):
    """A virtual environment created at the top of a project: its bin, lib and pyvenv.cfg are shown, the
    project beside them is not."""
    from p3bench.execution.view import program_view

    for part in ("bin", "lib/python3/site-packages", "src", "data"):
        (tmp_path / part).mkdir(parents=True)
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "data" / "answers.jsonl").write_text("{}\n")
    view = program_view([str(tmp_path)], private=[str(tmp_path / "src")])
    sources = view.sources()
    root = str(tmp_path.resolve())
    assert {s for s in sources if s.startswith(root)} == {f"{root}/bin", f"{root}/lib", f"{root}/pyvenv.cfg"}
    everything = program_view([str(tmp_path)]).sources()
    assert root in everything  # without anything private inside, the prefix is shown whole
