"""Model start-up, one place for the server and every CLI command: find the file, read and validate it
once, size the context and the KV cache, pack the weights into the native core, build the tokenizer."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .config import ServerConfig, draft_kv_blocks, kv_block_bytes, kv_blocks_for
from .engine.prompt_lookup import K_MAX
from .model.default_model import default_model_path
from .model.model_file import ModelLoadError, read_model_file
from .model.native_model import LoadedModel, ReplicatedModel, load_model
from .model.template_worker import warm_up
from .model.tokenizer import Tokenizer
from .model.vocab_check import check_same_vocabulary
from .topology import detect_topology


@dataclass
class ServingModel:
    model: LoadedModel | ReplicatedModel
    tokenizer: Tokenizer
    name: str  # the id /v1/models reports: --model-name, else the file's name
    draft: LoadedModel | None = None  # --draft-model: its own KV cache and threads, same vocabulary


def load_serving_model(cfg: ServerConfig, progress: bool = True) -> ServingModel:
    """Raises ModelLoadError (a message naming what is wrong with the file) or FileNotFoundError."""
    from tqdm import tqdm

    path = cfg.model or default_model_path()
    mf = read_model_file(path)
    hp = mf.hparams
    draft_mf = _read_draft(cfg.draft_model, mf) if cfg.draft_model else None
    weight_bytes = mf.file_bytes + (draft_mf.file_bytes if draft_mf else 0)  # both in memory
    file_name = path.rsplit("/", 1)[-1]
    topology = detect_topology(cfg.threads, cfg.numa)
    copies = len(topology.nodes) if topology.mode == "replicate" else 1  # one KV cache per replica
    n_ctx = min(cfg.ctx_size, hp.n_ctx_train)
    kv_blocks = kv_blocks_for(cfg, hp, weight_bytes=weight_bytes, copies=copies)
    # Sized before anything is loaded, so the memory still available is what both will share.
    draft_blocks = draft_kv_blocks(cfg, draft_mf.hparams, n_ctx, K_MAX, spoken_for=weight_bytes
                                   + kv_blocks * kv_block_bytes(hp, cfg.block_size)) if draft_mf else 0
    with tqdm(total=hp.n_layer, desc=f"loading {file_name}", unit="layer", file=sys.stderr,
              disable=not progress) as bar:
        model = load_model(mf, threads=cfg.threads, n_ctx=n_ctx, kv_blocks=kv_blocks,
                           block_size=cfg.block_size, max_step_tokens=cfg.max_step_tokens,
                           max_out_rows=max(cfg.max_batch, 1) * (1 + (K_MAX if cfg.speculation else 0)),
                           progress=lambda i, n: bar.update(1), numa=cfg.numa)
    draft = _load_draft(cfg, draft_mf, model, draft_blocks, progress) if draft_mf else None
    tokenizer = Tokenizer.from_metadata(model.metadata)
    if tokenizer.chat_template:
        warm_up()  # the file's template renders in a worker process: start it before the first request
    return ServingModel(model, tokenizer, cfg.model_name or file_name.removesuffix(".gguf"), draft)


def _read_draft(path: str, target):
    """The draft file, validated and checked to share the target's vocabulary (before any weight is
    packed, so a wrong file fails in a second)."""
    try:
        draft = read_model_file(path)
    except ModelLoadError as e:
        raise ModelLoadError(f"draft model: {e}") from None
    check_same_vocabulary(target, draft)
    return draft


def _load_draft(cfg: ServerConfig, mf, target: LoadedModel, kv_blocks: int, progress: bool) -> LoadedModel:
    """The draft model beside the target: the same context, threads and CPUs (its own pool: the two
    never run at once), its own KV cache of kv_blocks (config.draft_kv_blocks), logits rows for one
    draft per sequence."""
    from tqdm import tqdm

    hp = mf.hparams
    with tqdm(total=hp.n_layer, desc=f"loading draft {mf.path.rsplit('/', 1)[-1]}", unit="layer", file=sys.stderr,
              disable=not progress) as bar:
        try:
            return load_model(mf, threads=cfg.threads, n_ctx=target.n_ctx, kv_blocks=kv_blocks,
                              block_size=cfg.block_size, max_step_tokens=cfg.max_step_tokens,
                              max_out_rows=max(cfg.max_batch, 1), progress=lambda i, n: bar.update(1), numa=cfg.numa)
        except (ModelLoadError, ValueError) as e:
            raise ModelLoadError(f"draft model: {e}") from None
