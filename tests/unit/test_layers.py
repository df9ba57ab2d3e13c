"""The layers point one way: the import contracts of pyproject.toml ([tool.importlinter]),
run as `make lint` runs them, so a wrong import fails the suite and CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_the_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_a_wrong_import_breaks_a_contract(tmp_path: Path) -> None:
    """The contracts bite: a copy of the tree whose simulator imports product code fails."""
    for pkg in ("schemas", "agents", "connectors", "streams", "api", "sim", "bench"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    farm = tmp_path / "sim" / "farm.py"
    farm.write_text(farm.read_text() + "\nfrom connectors.stratum_pool import StratumPool\n")
    lint = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={"PYTHONPATH": str(tmp_path),
                                                    "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "the simulator depends only on schemas BROKEN" in r.stdout
    assert "sim.farm -> connectors.stratum_pool" in r.stdout
