"""Loading a validated GGUF file into the native core, and the one-call step on top of it."""

from __future__ import annotations

import gc
import logging
import math
import mmap
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
from gguf import GGMLQuantizationType

from ..config import DEFAULT_BLOCK_SIZE, DEFAULT_MAX_STEP_TOKENS
from ..topology import Topology, detect_topology, plan_notes, plan_shares
from .architecture import ModelHParams
from .description import describe
from .model_file import GGUFModelFile, ModelLoadError, TensorData, read_model_file

log = logging.getLogger("sysinfer.loader")

DEFAULT_MAX_OUT_ROWS = 64
INT32_MAX = (1 << 31) - 1
DEFAULT_CTX_CAP = 8192  # a file's trained context can be 128k: don't size the cache for it unasked


@dataclass
class LoadStats:
    seconds: float
    weight_bytes: int
    kv_bytes: int


def _release_file_pages(tensors: dict[str, TensorData]) -> None:
    """Drops the mapped file's pages from this process's resident set once their tensors are packed
    (they stay in the page cache): loading then peaks near one copy of the weights, not two."""
    mapping = next((getattr(t.data, "_mmap", None) for t in tensors.values()), None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def load_weights(native, mf: GGUFModelFile, names: list[str], progress: Callable[[int, int], None] | None = None) -> None:
    """Hands the native core each layer's tensors (the model-wide ones first), in the order of its
    description (names: the GGUF name of each described tensor)."""
    t = mf.tensors
    for layer in range(-1, mf.hparams.n_layer):
        native.load(layer, [t[names[i]].raw_bytes() for i in native.layer_tensors(layer)])
        if layer >= 0:
            _release_file_pages(t)
            if progress:
                progress(layer + 1, mf.hparams.n_layer)
    native.finish_loading()


class LoadedModel:
    """A model in the native core with its paged KV cache; `step` runs one forward pass."""

    def __init__(self, mf: GGUFModelFile, native, n_ctx: int, n_kv_blocks: int, block_size: int,
                 max_step_tokens: int, max_out_rows: int, load_stats: LoadStats, topology: Topology | None = None):
        self.path = mf.path
        self.hparams: ModelHParams = mf.hparams
        self.metadata: dict[str, Any] = mf.metadata
        self.file_bytes = mf.file_bytes
        self.n_params = mf.n_params
        self.native = native
        self.n_vocab = mf.hparams.n_vocab
        self.n_ctx = n_ctx
        self.n_kv_blocks = n_kv_blocks
        self.block_size = block_size
        self.max_step_tokens = max_step_tokens
        self.max_out_rows = max_out_rows
        self.load_stats = load_stats
        self.topology = topology
        self._logits = np.zeros((max_out_rows, self.n_vocab), dtype=np.float32)  # [max_out_rows, n_vocab]

    @property
    def kernels(self) -> str:
        return self.native.kernels

    @property
    def n_threads(self) -> int:
        return self.native.n_threads

    @property
    def n_nodes(self) -> int:
        return self.native.n_nodes

    def node_report(self) -> list[dict]:
        """Per node: threads, CPUs, its heads / FFN columns / vocabulary rows, bytes, memory binding."""
        return self.native.node_report()

    def step(self, token_ids, positions, seq_starts, block_tables, context_lens, logits_rows) -> np.ndarray:
        """One forward pass for a batch; returns logits [len(logits_rows), n_vocab], a view that the
        next step overwrites. See Model.step in native/src/model.h for the array meanings."""
        i32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
        tables = np.ascontiguousarray(block_tables, dtype=np.int32)
        if tables.ndim == 1:
            tables = tables.reshape(1, -1)
        rows = i32(logits_rows).reshape(-1)
        if len(rows) > self.max_out_rows:
            raise ValueError(f"at most {self.max_out_rows} logits rows per step, got {len(rows)}")
        self.native.step(i32(token_ids).reshape(-1), i32(positions).reshape(-1), i32(seq_starts).reshape(-1), tables,
                         i32(context_lens).reshape(-1), rows, self._logits)
        return self._logits[: len(rows)]


def load_model(source: "str | GGUFModelFile", *, threads: int | None = None, n_ctx: int | None = None, kv_blocks: int | None = None,
               block_size: int = DEFAULT_BLOCK_SIZE, max_step_tokens: int = DEFAULT_MAX_STEP_TOKENS,
               max_out_rows: int = DEFAULT_MAX_OUT_ROWS, progress: Callable[[int, int], None] | None = None,
               numa: str | None = None) -> "LoadedModel | ReplicatedModel":
    """Validate (unless given a file read_model_file already validated), pack the weights into the
    native core (each NUMA node's share into its own memory: sysinfer.topology), release the file,
    allocate the KV cache. numa: "auto" | "tp" | "replicate" | "off" (default: SYSINFER_NUMA, else
    auto). With "replicate", one whole copy per node: a ReplicatedModel of one LoadedModel per node,
    each with kv_blocks blocks of its own (sysinfer/engine/lanes.py runs them)."""
    start = time.perf_counter()
    mf = source if isinstance(source, GGUFModelFile) else read_model_file(source)
    hp = mf.hparams
    n_ctx = n_ctx or min(hp.n_ctx_train, DEFAULT_CTX_CAP)
    if n_ctx < 1:
        raise ValueError(f"context size must be positive, got {n_ctx}")
    topology = detect_topology(threads, numa)
    max_step_tokens = max(1, min(max_step_tokens, n_ctx))
    max_out_rows = max(1, min(max_out_rows, max_step_tokens))
    kv_blocks = kv_blocks or math.ceil(n_ctx / block_size)
    _check_native_limits(mf, {**hp.int_fields(), "n_ctx": n_ctx})
    sizes = (n_ctx, kv_blocks, block_size, max_step_tokens, max_out_rows)
    if topology.mode == "replicate":
        lanes = [Topology("replicate", [replace(node, index=0)], f"replica {i} of {len(topology.nodes)}; {topology.source}",
                          topology.os_nodes, topology.notes) for i, node in enumerate(topology.nodes)]
        models = [_pack(mf, lane, sizes, progress, start) for lane in lanes]
        model: LoadedModel | ReplicatedModel = ReplicatedModel(models, topology)
    else:
        model = _pack(mf, topology, sizes, progress, start)
    mf.tensors.clear()  # drop the mmap views: the packed copies are all we keep
    del mf
    gc.collect()
    return model


def _check_native_limits(mf: GGUFModelFile, config: dict) -> None:
    for key, value in config.items():  # the native core reads C ints: a bigger value is std::bad_cast
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= INT32_MAX:
            raise ModelLoadError(f"{mf.path}: {key} = {value} does not fit the native core (at most {INT32_MAX})")
    for t in mf.tensors.values():
        if t.rows > INT32_MAX or t.cols > INT32_MAX:
            raise ModelLoadError(f"{mf.path}: tensor {t.name!r} of shape {list(t.shape)} is too large for the native core")


def _pack(mf: GGUFModelFile, topology: Topology, sizes: tuple[int, int, int, int, int],
          progress: Callable[[int, int], None] | None, start: float) -> LoadedModel:
    """One native model over the topology's nodes (tensor parallel when several), weights packed and
    KV cache allocated. The file stays mapped (a replica after this one packs from it again)."""
    from .. import _native

    hp = mf.hparams
    n_ctx, kv_blocks, block_size, max_step_tokens, max_out_rows = sizes
    types = {name: int(t.type) for name, t in mf.tensors.items()}
    shares = plan_shares(hp, types, len(topology.nodes), block_size)
    for note in plan_notes(hp, shares):
        log.warning("%s", note)
    nodes = [dict(threads=n.n_threads, cpus=list(n.cpus), mem_node=-1 if n.mem_node is None else n.mem_node, **s.native())
             for n, s in zip(topology.nodes, shares)]
    try:
        desc, names = describe(mf, n_ctx)
        native = _native.Model(desc, nodes)
        load_weights(native, mf, names, progress)
    except ValueError as e:  # shape/type problems the native side found
        raise ModelLoadError(f"{mf.path}: {e}") from None
    native.init_cache(kv_blocks, block_size, max_step_tokens, max_out_rows)
    failed = [f"{i} (OS node {r['mem_node']})" for i, r in enumerate(native.node_report()) if r["binding"] == "failed"]
    if failed:
        log.warning("binding memory to its NUMA node failed for node(s) %s (a kernel without NUMA support, or "
                    "without that node?): the kernel placed those pages", ", ".join(failed))
    stats = LoadStats(time.perf_counter() - start, native.weight_bytes, native.kv_bytes)
    return LoadedModel(mf, native, n_ctx, kv_blocks, block_size, max_step_tokens, max_out_rows, stats, topology)


class ReplicatedModel:
    """--numa replicate: one whole LoadedModel per node (its weights, KV arena and threads on that
    node). Reads as its first replica (shapes, metadata, step) for code that runs one sequence at a
    time (`sysinfer generate`, `bench`: one lane); the server runs every replica as a lane
    (sysinfer/engine/lanes.py)."""

    def __init__(self, replicas: list[LoadedModel], topology: Topology):
        self.replicas = replicas
        self.topology = topology
        self.load_stats = LoadStats(max(r.load_stats.seconds for r in replicas),  # packed one after another
                                    sum(r.load_stats.weight_bytes for r in replicas),
                                    sum(r.load_stats.kv_bytes for r in replicas))

    def __getattr__(self, name: str):
        return getattr(self.replicas[0], name)

    @property
    def n_nodes(self) -> int:
        return len(self.replicas)

    def node_report(self) -> list[dict]:
        """Every replica's node, in lane order, each with its lane index."""
        return [dict(r.node_report()[0], lane=i) for i, r in enumerate(self.replicas)]


__all__ = ["LoadedModel", "ModelLoadError", "ReplicatedModel", "load_model", "GGMLQuantizationType"]
