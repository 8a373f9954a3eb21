"""Model start-up, one place for the server and every CLI command: find the file, read and validate it
once, size the context and the KV cache, pack the weights into the native core, build the tokenizer."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .config import ServerConfig, kv_blocks_for
from .engine.prompt_lookup import K_MAX
from .model.default_model import default_model_path
from .model.model_file import read_model_file
from .model.native_model import LoadedModel, ReplicatedModel, load_model
from .model.template_worker import warm_up
from .model.tokenizer import Tokenizer
from .topology import detect_topology


@dataclass
class ServingModel:
    model: LoadedModel | ReplicatedModel
    tokenizer: Tokenizer
    name: str  # the id /v1/models reports: --model-name, else the file's name


def load_serving_model(cfg: ServerConfig, progress: bool = True) -> ServingModel:
    """Raises ModelLoadError (a message naming what is wrong with the file) or FileNotFoundError."""
    from tqdm import tqdm

    path = cfg.model or default_model_path()
    mf = read_model_file(path)
    hp = mf.hparams
    file_name = path.rsplit("/", 1)[-1]
    topology = detect_topology(cfg.threads, cfg.numa)
    copies = len(topology.nodes) if topology.mode == "replicate" else 1  # one KV cache per replica
    with tqdm(total=hp.n_layer, desc=f"loading {file_name}", unit="layer", file=sys.stderr,
              disable=not progress) as bar:
        model = load_model(mf, threads=cfg.threads, n_ctx=min(cfg.ctx_size, hp.n_ctx_train),
                           kv_blocks=kv_blocks_for(cfg, hp, weight_bytes=mf.file_bytes, copies=copies),
                           block_size=cfg.block_size, max_step_tokens=cfg.max_step_tokens,
                           max_out_rows=max(cfg.max_batch, 1) * (1 + (K_MAX if cfg.speculation else 0)),
                           progress=lambda i, n: bar.update(1), numa=cfg.numa)
    tokenizer = Tokenizer.from_metadata(model.metadata)
    if tokenizer.chat_template:
        warm_up()  # the file's template renders in a worker process: start it before the first request
    return ServingModel(model, tokenizer, cfg.model_name or file_name.removesuffix(".gguf"))
