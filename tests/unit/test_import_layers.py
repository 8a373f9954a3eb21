"""The import contracts in .importlinter, checked as CI runs them: the layers (CLI -> server -> engine
-> structured -> model -> config, each importing only downwards) and no circles between the modules
of a package. A broken contract prints the offending import chain."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install import-linter")
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is installed but its lint-imports command is not on PATH"
    # From the repository's root: lint-imports puts the working directory first on the path, so it
    # reads this checkout's sysinfer/, not an installed copy.
    out = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
