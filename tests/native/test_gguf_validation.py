"""Broken model files are refused with one ModelLoadError naming what is wrong, never a crash.

Each case runs the loader in a child process as well, so a segfault would fail the test instead of
killing the test run.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from support.model_files import TINY_SPECS, tiny_model
from sysinfer.model.model_file import ModelLoadError, read_model_file
from sysinfer.model.synth import SynthSpec, write_synthetic_gguf


def load_in_child(path: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        "from sysinfer.model.native_model import load_model\n"
        "from sysinfer.model.model_file import ModelLoadError\n"
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
            data = np.zeros((rows, 512 // 256 * 66), np.uint8)  # 512 columns of IQ2_XXS: 66 bytes per 256
            qt = QT.IQ2_XXS
        real_add(w, name, data, qt)

    monkeypatch.setattr(synth, "_add", add)
    path = _variant(tmp_path, "type.gguf")
    assert_refused(path, "blk.0.ffn_down.weight", "unsupported type IQ2_XXS")


def _retyped(src: str, dst, tensor: str, qtype: QT) -> str:
    """A copy of src with one tensor's type id in its directory entry replaced (nothing else moves)."""
    data = bytearray(open(src, "rb").read())
    name = tensor.encode()
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    n_dims = int.from_bytes(data[at : at + 4], "little")
    at += 4 + 8 * n_dims  # the type id follows the dimensions
    data[at : at + 4] = int(qtype).to_bytes(4, "little")
    dst.write_bytes(bytes(data))
    return str(dst)


@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q2_K, QT.IQ4_XS])
def test_super_block_type_on_short_rows(tmp_path, qtype):
    """Rows of 64 (tiny-llama-q5's attn_q) can't hold a 256-weight super-block: refused by name."""
    path = _retyped(tiny_model("llama-q5"), tmp_path / "short.gguf", "blk.0.attn_q.weight", qtype)
    assert_refused(path, "blk.0.attn_q.weight", f"does not fit {qtype.name} blocks of 256")


@pytest.mark.parametrize(("tensor", "qtype"), [("output.weight", QT.Q8_0), ("output.weight", QT.BF16),
                                               ("blk.1.ffn_down.weight", QT.Q6_K), ("blk.0.attn_k.weight", QT.Q5_1)])
def test_wrong_block_size_for_the_data(tmp_path, tensor, qtype):
    """A tensor retyped to a type of more bytes per weight: its bytes no longer fit where they lie
    (they overlap the next tensor, or run past the end of the file), refused before anything is read."""
    path = _retyped(tiny_model("llama-kquants"), tmp_path / "size.gguf", tensor, qtype)
    assert_refused(path, tensor)


@pytest.mark.parametrize("kind", ["llama-kquants", "llama-q5"])
def test_truncated_new_types(tmp_path, kind):
    """Files of every new type cut inside their last tensor's blocks are refused as truncated."""
    data = open(tiny_model(kind), "rb").read()
    for cut in (len(data) - 1, len(data) - 100):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        assert_refused(str(path), "truncated")


@pytest.mark.parametrize("kind", ["llama-kquants", "llama-q5"])
def test_every_new_type_loads(kind):
    mf = read_model_file(tiny_model(kind))
    child = load_in_child(tiny_model(kind))
    assert child.returncode == 0, child.stdout + child.stderr
    assert {t.type for t in mf.tensors.values()} >= ({QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q5_0, QT.IQ4_XS}
                                                    if kind == "llama-kquants" else {QT.Q5_0, QT.Q5_1, QT.BF16, QT.IQ4_NL})


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


# ---- start-up with the wrong thing as a model file: one line naming the problem ----

def run_cli_in_child(*args: str, max_mb: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`sysinfer ARGS` in a child process (optionally under an address-space limit)."""
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({max_mb << 20}, -1))\n" if max_mb else ""
    code = f"{limit}import sys\nfrom sysinfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=os.path.dirname(os.path.abspath(__file__)))


def assert_one_line_error(path: str, *fragments: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        read_model_file(path)
    message = str(info.value)
    assert "\n" not in message and len(message) <= 1000, message[:2000]
    for f in fragments:
        assert f in message, message
    out = run_cli_in_child("info", path)
    assert out.returncode != 0 and not out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sysinfer: error:") and "Traceback" not in out.stderr, out.stderr[-3000:]
    for f in fragments:
        assert f in lines[0], lines[0]


def test_missing_file(tmp_path):
    assert_one_line_error(str(tmp_path / "nothing.gguf"), "no such file")


def test_directory(tmp_path):
    assert_one_line_error(str(tmp_path), "is a directory")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    assert_one_line_error(str(path), "empty")


def test_not_gguf(tmp_path):
    path = tmp_path / "readme.gguf"
    path.write_text("# not a model\n" * 100)
    assert_one_line_error(str(path), "not a GGUF file")


def test_unsupported_architecture_one_line(tmp_path):
    path = tmp_path / "arch.gguf"
    data = bytearray(open(tiny_model("llama"), "rb").read())
    at = data.find(b"llama", 0, 4096)
    data[at : at + 5] = b"mamba"
    path.write_bytes(bytes(data))
    assert_one_line_error(str(path), "'mamba'", "not supported")


# ---- header surgery on the real SmolLM2 file (issue 15, items 3, 8, 9) ----
# A mutated copy is the file's header (edited) followed by a sparse hole as long as the original
# tensor data: read_model_file never reads the data, so this costs kilobytes, not 100 MB.

@functools.lru_cache(maxsize=1)
def smollm2_header() -> "Header":
    return Header(smollm2_path())


def smollm2_path() -> str:
    from support.model_files import smollm2_q4_1

    try:
        return smollm2_q4_1()
    except FileNotFoundError as e:
        pytest.skip(str(e))


class Header:
    def __init__(self, path: str):
        from sysinfer.model.gguf_header import parse_header, read_header

        self.data_start = read_header(path)[3]
        self.data_bytes = os.path.getsize(path) - self.data_start
        with open(path, "rb") as f:
            self.bytes = f.read(self.data_start)
        self.fields: list[tuple[str, int, int, str]] = []
        parse_header(self.bytes, lambda *f: self.fields.append(f))

    def field(self, label: str, kind: str | None = None) -> tuple[str, int, int, str]:
        found = [f for f in self.fields if f[3] == label and (kind is None or f[0] == kind)]
        assert found, label
        return found[0]

    def patched(self, label: str, value: int, kind: str | None = None) -> bytes:
        _, off, size, _ = self.field(label, kind)
        return self.bytes[:off] + (value % (1 << (8 * size))).to_bytes(size, "little") + self.bytes[off + size :]

    def retyped(self, key: str, value_type: int, raw_value: bytes) -> bytes:
        """The header with key's value replaced by (value_type, raw_value)."""
        start = self.field(f"{key} value type", "type")[1]
        later = [f[1] for f in self.fields if f[1] > start and f[0] == "length"
                 and (f[3].startswith("metadata key #") or f[3].startswith("name of tensor #"))]
        end = min(later)
        return self.bytes[:start] + struct.pack("<I", value_type) + raw_value + self.bytes[end:]

    def write(self, path, header: bytes) -> str:
        """header, zeros to the next multiple of 32, then a hole as long as the original data."""
        padded = header + bytes(-len(header) % 32)
        with open(path, "wb") as f:
            f.write(padded)
            f.truncate(len(padded) + self.data_bytes)
        return str(path)


def gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def refuse_under_memory_limit(path: str, *fragments: str, max_mb: int = 1024, child: bool = True) -> str:
    """read_model_file and `sysinfer info` refuse the file with a short message, and `info` does so
    in a child process that may not map more than max_mb MiB (when `child`)."""
    with pytest.raises(ModelLoadError) as info:
        read_model_file(path)
    message = str(info.value)
    assert "\n" not in message and len(message) <= 1000, message[:2000]
    for f in fragments:
        assert f in message, message
    if not child:
        return message
    out = run_cli_in_child("info", path, max_mb=max_mb, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "MemoryError" not in out.stderr, out.stderr[-3000:]
    assert len(out.stderr) < 1200, len(out.stderr)
    return message


def test_smollm2_header_round_trip(tmp_path):
    h = smollm2_header()
    mf = read_model_file(h.write(tmp_path / "same.gguf", h.bytes))
    assert mf.hparams.n_layer == 30 and mf.hparams.n_vocab == 49152


@pytest.mark.parametrize("value", [0, 1, 2**31, 2**32 - 1])
def test_block_count_out_of_range(tmp_path, value):
    """Item 3: FF FF FF FF over llama.block_count grew ~220 MiB/s until killed."""
    h = smollm2_header()
    path = h.write(tmp_path / "blocks.gguf", h.patched("llama.block_count", value, "value"))
    message = refuse_under_memory_limit(path, "llama.block_count")
    assert (value == 1) == ("belongs to no layer" in message), message


@pytest.mark.parametrize("label", ["tensor count", "metadata key count", "tokenizer.ggml.tokens array count",
                                   "tokenizer.ggml.merges array count", "tokenizer.ggml.token_type array count",
                                   "metadata key #3", "tokenizer.chat_template", "name of tensor #0"])
@pytest.mark.parametrize("value", [2**31, 2**58 + 49152, 2**60, 2**63, 2**64 - 1])
def test_huge_counts_allocate_nothing(tmp_path, label, value):
    """A count or length of 2^60 is refused before anything is allocated or looped over."""
    h = smollm2_header()
    kind = "count" if "count" in label else "length"
    path = h.write(tmp_path / "count.gguf", h.patched(label, value, kind))
    # the child (a process of its own, 400 MiB of address space) for 2^60; in this process otherwise
    refuse_under_memory_limit(path, max_mb=400, child=value == 2**60)


def test_dimension_count_changed(tmp_path):
    """Item 8: one tensor's n_dims 2 -> 1 gave a 140 MB error line (served as the /health body)."""
    h = smollm2_header()
    two_d = [f for f in h.fields if f[0] == "ndims" and int.from_bytes(h.bytes[f[1] : f[1] + 4], "little") == 2]
    for f in two_d[:: max(1, len(two_d) // 12)] + two_d[-1:]:
        path = h.write(tmp_path / "ndims.gguf", h.patched(f[3], 1, "ndims"))
        with pytest.raises(ModelLoadError) as info:
            read_model_file(path)
        assert len(str(info.value)) <= 1000 and "\n" not in str(info.value), (f, len(str(info.value)))
    # with the real tensor data after the header (the parse runs into it): this one was 133 MB
    path = tmp_path / "ndims-full.gguf"
    shutil.copy(smollm2_path(), path)
    with open(path, "r+b") as f:
        f.seek(two_d[-1][1])
        f.write(struct.pack("<I", 1))
    refuse_under_memory_limit(str(path), "name of tensor", "at most 256")


def test_error_messages_are_bounded():
    long = "x" * 10_000_000
    assert len(str(ModelLoadError(f"{long}\n{long}"))) <= 1000
    from sysinfer.model.gguf_header import describe

    assert len(describe(long)) < 260 and len(describe(list(range(10**6)))) < 100 and len(describe(b"\xff" * 10**6)) < 260


def test_zero_dimension(tmp_path):
    """Item 9: a zero dimension gave a ZeroDivisionError traceback."""
    h = smollm2_header()
    for dim in ("token_embd.weight dim 0", "token_embd.weight dim 1", "blk.0.attn_norm.weight dim 0"):
        path = h.write(tmp_path / "zero.gguf", h.patched(dim, 0, "dim"))
        refuse_under_memory_limit(path, dim.split(" ")[0], "dimension")


def test_tokenizer_model_as_integer(tmp_path):
    """Item 9: tokenizer.ggml.model stored as an integer gave a TypeError."""
    h = smollm2_header()
    path = h.write(tmp_path / "tokint.gguf", h.retyped("tokenizer.ggml.model", 4, struct.pack("<I", 7)))
    refuse_under_memory_limit(path, "tokenizer.ggml.model", "string")
    from sysinfer.model.gguf_header import read_gguf_header
    from sysinfer.model.tokenizer import Tokenizer

    with pytest.raises(ModelLoadError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata(read_gguf_header(path))


def test_vocab_and_dimension_wrap(tmp_path):
    """Item 9: vocab_size and token_embd's dimension 2^58 + 49152 wrapped the element count to the
    real one (576 * 2^58 = 9 * 2^64): `info` printed it, `generate` died with std::bad_cast."""
    h = smollm2_header()
    big = 2**58 + 49152
    dim = h.field("token_embd.weight dim 1", "dim")
    header = h.bytes[: dim[1]] + struct.pack("<Q", big) + h.bytes[dim[1] + 8 :]
    # vocab_size is a u32 in this file: rewrite it as a u64 (the header grows by 4 bytes)
    start = h.field("llama.vocab_size value type", "type")[1]
    header = header[:start] + struct.pack("<IQ", 10, big) + header[start + 8 :]
    path = h.write(tmp_path / "wrap.gguf", header)
    refuse_under_memory_limit(path, "llama.vocab_size")
    # the dimension alone: the element count is a Python int, checked against the file size
    path = h.write(tmp_path / "wrapdim.gguf", h.bytes[: dim[1]] + struct.pack("<Q", big) + h.bytes[dim[1] + 8 :])
    refuse_under_memory_limit(path, "token_embd.weight", str(big), "truncated")


# Every metadata key we read, stored with a wrong type: a ModelLoadError naming the key.
WRONG_TYPES = {
    "general.architecture": (4, struct.pack("<I", 1)),
    "general.name": (4, struct.pack("<I", 1)),
    "llama.block_count": (8, gguf_string("30")),
    "llama.context_length": (6, struct.pack("<f", 8192.0)),
    "llama.embedding_length": (7, b"\x01"),
    "llama.feed_forward_length": (9, struct.pack("<IQ", 4, 1) + struct.pack("<I", 1536)),
    "llama.attention.head_count": (8, gguf_string("9")),
    "llama.attention.head_count_kv": (12, struct.pack("<d", 3.0)),
    "llama.rope.freq_base": (8, gguf_string("1e5")),
    "llama.attention.layer_norm_rms_epsilon": (7, b"\x01"),
    "llama.vocab_size": (8, gguf_string("49152")),
    "llama.rope.dimension_count": (6, struct.pack("<f", 64.0)),
    "tokenizer.ggml.add_bos_token": (8, gguf_string("false")),
    "tokenizer.ggml.model": (9, struct.pack("<IQ", 8, 1) + gguf_string("gpt2")),
    "tokenizer.ggml.pre": (4, struct.pack("<I", 1)),
    "tokenizer.ggml.tokens": (8, gguf_string("hello")),
    "tokenizer.ggml.token_type": (9, struct.pack("<IQ", 6, 2) + struct.pack("<ff", 1, 1)),
    "tokenizer.ggml.merges": (9, struct.pack("<IQ", 4, 1) + struct.pack("<I", 1)),
    "tokenizer.ggml.bos_token_id": (8, gguf_string("1")),
    "tokenizer.ggml.eos_token_id": (7, b"\x01"),
    "tokenizer.ggml.unknown_token_id": (6, struct.pack("<f", 0.0)),
    "tokenizer.ggml.padding_token_id": (8, gguf_string("2")),
    "tokenizer.chat_template": (4, struct.pack("<I", 1)),
}


@pytest.mark.parametrize("key", sorted(WRONG_TYPES))
def test_metadata_key_of_wrong_type(tmp_path, key):
    h = smollm2_header()
    path = h.write(tmp_path / "type.gguf", h.retyped(key, *WRONG_TYPES[key]))
    with pytest.raises(ModelLoadError) as info:
        read_model_file(path)
    assert key in str(info.value) and len(str(info.value)) <= 1000, str(info.value)[:2000]


def test_tokenizer_metadata_types():
    """Tokenizer.from_metadata on its own (the API builds it from a model's metadata) checks types
    too, and its errors are ModelLoadErrors (and ValueErrors, as before)."""
    from sysinfer.model.gguf_header import read_gguf_header
    from sysinfer.model.tokenizer import Tokenizer, TokenizerError

    good = read_gguf_header(tiny_model("llama"))
    Tokenizer.from_metadata(good)
    bad_values = {
        "tokenizer.ggml.model": [7, None, ["gpt2"], "x" * 10**6],
        "tokenizer.ggml.tokens": ["abc", [1, 2], [], None],
        "tokenizer.ggml.token_type": [[1.5] * 512, "1", [True] * 512, [1] * 3],
        "tokenizer.ggml.merges": [[1, 2], "Ġ t"],
        "tokenizer.ggml.bos_token_id": ["1", -1, 512, True, 2**64 - 1],
        "tokenizer.ggml.padding_token_id": [10**6],
        "tokenizer.ggml.add_bos_token": ["yes", 1],
        "tokenizer.ggml.pre": [3, "x" * 10**6],
        "tokenizer.chat_template": [5, ["{{ x }}"]],
    }
    for key, values in bad_values.items():
        for value in values:
            with pytest.raises(TokenizerError) as info:
                Tokenizer.from_metadata({**good, key: value})
            assert isinstance(info.value, ModelLoadError) and isinstance(info.value, ValueError)
            assert key in str(info.value) and len(str(info.value)) <= 1000, (key, str(info.value)[:300])
