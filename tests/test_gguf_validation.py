"""Broken model files are refused with one ModelLoadError naming what is wrong, never a crash.

Each case runs the loader in a child process as well, so a segfault would fail the test instead of
killing the test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from model_files import TINY_SPECS, tiny_model
from sysinfer.model.gguf_loader import ModelLoadError, read_model_file
from sysinfer.model.synth import SynthSpec, write_synthetic_gguf


def load_in_child(path: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        "from sysinfer.model.loader import load_model\n"
        "from sysinfer.model.gguf_loader import ModelLoadError\n"
        "try:\n"
        f"    load_model({path!r}, threads=1, n_ctx=64)\n"
        "except ModelLoadError as e:\n"
        "    print('ModelLoadError:', e); sys.exit(3)\n"
    )
    # cwd: not the repo root, where `python -c` would import the source folder instead of the build
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))


def assert_refused(path: str, *fragments: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        read_model_file(path)
    for f in fragments:
        assert f in str(info.value), str(info.value)
    child = load_in_child(path)
    assert child.returncode == 3, f"child exit {child.returncode}: {child.stdout}{child.stderr}"
    assert "ModelLoadError" in child.stdout


def test_good_file_loads():
    mf = read_model_file(tiny_model("llama"))
    assert mf.hparams.arch == "llama" and mf.hparams.n_layer == TINY_SPECS["llama"].n_layer


def test_truncated_file(tmp_path):
    src = tiny_model("llama")
    data = open(src, "rb").read()
    for cut in (len(data) - 1000, len(data) // 2, 200, 6):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        assert_refused(str(path))
    path = tmp_path / "cut_tail.gguf"
    path.write_bytes(data[: len(data) - 1000])
    assert_refused(str(path), "truncated")


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad.gguf"
    data = bytearray(open(tiny_model("llama"), "rb").read())
    data[:4] = b"GGML"
    path.write_bytes(bytes(data))
    assert_refused(str(path), "magic")


def test_unsupported_version(tmp_path):
    path = tmp_path / "v9.gguf"
    data = bytearray(open(tiny_model("llama"), "rb").read())
    data[4:8] = (9).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert_refused(str(path), "version 9")


def _variant(tmp_path, name: str, **changes) -> str:
    spec = SynthSpec(**{**TINY_SPECS["llama"].__dict__, **changes})
    return write_synthetic_gguf(str(tmp_path / name), spec)


def test_missing_tensor(tmp_path, monkeypatch):
    import sysinfer.model.synth as synth

    real_add = synth._add
    monkeypatch.setattr(synth, "_add", lambda w, name, data, qt: None if name == "blk.1.ffn_up.weight" else real_add(w, name, data, qt))
    path = _variant(tmp_path, "missing.gguf")
    assert_refused(path, "blk.1.ffn_up.weight", "missing tensor")


def test_shape_mismatch(tmp_path, monkeypatch):
    import sysinfer.model.synth as synth

    real_add = synth._add

    def add(w, name, data, qt):
        if name == "blk.0.attn_k.weight":
            data = data[: data.shape[0] // 2]  # half the rows
        real_add(w, name, data, qt)

    monkeypatch.setattr(synth, "_add", add)
    path = _variant(tmp_path, "shape.gguf")
    assert_refused(path, "blk.0.attn_k.weight", "expected [256, 128]")


def test_unsupported_type(tmp_path, monkeypatch):
    import sysinfer.model.synth as synth

    real_add = synth._add

    def add(w, name, data, qt):
        if name == "blk.0.ffn_down.weight":
            rows = data.shape[0]
            data = np.zeros((rows, 512 // 32 * 24), np.uint8)  # 512 columns of Q5_1: 24 bytes per 32
            qt = QT.Q5_1
        real_add(w, name, data, qt)

    monkeypatch.setattr(synth, "_add", add)
    path = _variant(tmp_path, "type.gguf")
    assert_refused(path, "blk.0.ffn_down.weight", "unsupported type Q5_1")


def test_missing_metadata_key(tmp_path, monkeypatch):
    from gguf import GGUFWriter

    real = GGUFWriter.add_uint32
    monkeypatch.setattr(GGUFWriter, "add_uint32",
                        lambda self, k, v: None if k == "llama.feed_forward_length" else real(self, k, v))
    path = _variant(tmp_path, "nokey.gguf")
    assert_refused(path, "llama.feed_forward_length")


def test_unknown_architecture(tmp_path):
    src = tiny_model("llama")
    path = tmp_path / "arch.gguf"
    shutil.copy(src, path)
    data = bytearray(path.read_bytes())
    at = data.find(b"llama", 0, 4096)  # general.architecture's value comes first
    data[at : at + 5] = b"mamba"
    path.write_bytes(bytes(data))
    assert_refused(str(path), "mamba")
