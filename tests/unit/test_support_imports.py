"""tests/support is the package `support` (pyproject.toml's pytest pythonpath; symlinks in scripts/ and
benchmarks/): nothing edits sys.path to find it, and nothing imports its modules by their bare names
(a bare `model_files` beside `support.model_files` would be two modules with two caches)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"


def _sources():
    for folder in ("tests", "scripts", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if folder != "tests" and "support" in path.relative_to(ROOT / folder).parts:
                continue  # the symlinks to tests/support
            yield path


def test_support_is_a_package_found_without_sys_path_edits():
    assert (SUPPORT / "__init__.py").is_file()
    for folder in ("scripts", "benchmarks"):
        link = ROOT / folder / "support"
        assert link.is_symlink() and link.resolve() == SUPPORT, f"{folder}/support must link to tests/support"
    modules = sorted(p.stem for p in SUPPORT.glob("*.py") if p.stem != "__init__")
    bare = re.compile(r"^\s*(from|import) (" + "|".join(modules) + r")\b", re.M)
    edits = re.compile(r"^\s*sys\.path\.(insert|append)\(", re.M)
    found = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        found += [f"{where}: `{m.group(0).strip()}` (write `from support.{m.group(2)} import ...`)"
                  for m in bare.finditer(text)]
        found += [f"{where}: edits sys.path" for _ in edits.finditer(text)]
    assert not found, "\n".join(found)
