"""The ``uid`` level (root without namespaces) leaves the host as it was: ``/tmp`` keeps its mode, and
nothing the program wrote stays in ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock`` or a world-writable
directory inside them. The run happens in a private mount namespace with fresh tmpfs over those directories,
so that a failure cannot damage this machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .sandbox_levels import REPO_ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

SHARED_DIRS = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]

# Inside the private mount namespace: fresh world-writable tmpfs over the shared directories, a
# world-writable directory inside /tmp (another user's, say), then the Python script.
MOUNTS = r"""set -e
for d in /tmp /var/tmp /dev/shm /run/lock; do
  if [ -d "$d" ]; then mount -t tmpfs -o mode=1777,size=16m p3bench-test "$d"; fi
done
mkdir /tmp/shared && chmod 0777 /tmp/shared
exec "$@"
"""

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from p3bench.errors import ConfigError
    from p3bench.execution import Sandbox, configure_execution
    configure_execution(True)
    sandbox = Sandbox(mode="uid")
    try:
        sandbox.isolation
    except ConfigError as err:
        print(json.dumps({"skip": str(err)[:300]}))
        sys.exit(0)
    targets = [os.path.join(d, "p3bench-left") for d in DIRS if os.path.isdir(d)] + ["/tmp/shared/p3bench-left"]
    program = (
        "import os\\n"
        f"for path in {targets!r}:\\n"
        "    try:\\n        open(path, 'w').write('x')\\n        os.mkdir(path + '-dir')\\n"
        "    except OSError as err:\\n        print(path, err)\\n"
        "print('done')\\n"
    )
    result = sandbox.run_python(program)
    left = sorted(
        os.path.join(d, name) for d in [*DIRS, "/tmp/shared"] if os.path.isdir(d)
        for name in os.listdir(d) if name.startswith("p3bench-left")
    )
    modes = {d: oct(os.stat(d).st_mode & 0o7777) for d in DIRS if os.path.isdir(d)}
    print(json.dumps({"stdout": result.stdout.decode(), "ok": result.ok, "left": left, "modes": modes}))
    """
)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare(1)")
def test_uid_level_leaves_tmp_and_shared_dirs_as_they_were():
    script = f"DIRS = {SHARED_DIRS!r}\n" + SCRIPT
    command = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", MOUNTS, "mounts"]
    trial = subprocess.run([*command, "true"], capture_output=True, text=True, timeout=60)
    if trial.returncode != 0:
        pytest.skip(f"no private mount namespace with tmpfs here: {trial.stderr.strip()[-200:]}")
    done = subprocess.run(
        [*command, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "P3BENCH_ALLOW_CODE_EXECUTION": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(f"the uid level does not work here: {report['skip']}")
    assert report["ok"] and report["stdout"].endswith("done\n"), report
    assert report["modes"] == {d: oct(0o1777) for d in report["modes"]}
    assert report["left"] == []


def test_removing_a_workdir_never_changes_anything_outside_it(tmp_path: Path):
    """The working directory may be gone already (the uid level removes the uid's files first), or hold a
    symlink out of it: removing it changes neither its parent nor the link's target."""
    from p3bench.execution.process import _remove_tree

    parent = tmp_path / "parent"
    parent.mkdir()
    os.chmod(parent, 0o1777)
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    os.chmod(outside, 0o644)
    work = parent / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "link").symlink_to(outside)
    _remove_tree(str(work))
    assert not work.exists()
    _remove_tree(str(work))  # already gone
    assert oct(parent.stat().st_mode & 0o7777) == oct(0o1777)
    assert oct(outside.stat().st_mode & 0o777) == oct(0o644) and outside.read_text() == "x"
