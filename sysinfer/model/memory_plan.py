"""What a model file asks of memory and of memory bandwidth, from its tensor table alone (no weight
is read): `sysinfer info`'s memory rows, and the byte count a decode roofline is taken against.

- weights: every tensor as the file stores it (the packed copy is the same size but for the rows
  padded to a tile, a few KiB);
- per token, a decode step reads every matrix once, but of the embedding table one row (unless it
  doubles as the output) and, in a mixture-of-experts model, only the experts the router picks: k of E
  of each layer's expert tensors (an average: which experts varies, their size does not);
- the KV cache: K and V of every layer, fp16, per token of context."""

from __future__ import annotations

from dataclasses import dataclass

EXPERT_TENSORS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


@dataclass
class MemoryPlan:
    weight_bytes: int        # every tensor, as stored
    expert_bytes: int        # the expert tensors among them (0 for a dense model)
    token_read_bytes: int    # what one decode token reads (see the module doc)
    kv_bytes_per_token: int  # K and V, every layer, fp16

    def kv_tokens_that_fit(self, available: int) -> int:
        """Tokens of KV cache `sysinfer serve` would size at most with `available` bytes free: half of
        what the weights leave (config.kv_blocks_for's rule); 0 when the weights alone don't fit."""
        return max(0, (available - self.weight_bytes) // 2 // self.kv_bytes_per_token)


def memory_plan(mf) -> MemoryPlan:
    """mf: a GGUFModelFile (model_file.read_model_file)."""
    hp = mf.hparams
    total = sum(t.data.nbytes for t in mf.tensors.values())
    experts = sum(t.data.nbytes for name, t in mf.tensors.items() if name.split(".")[-2] in EXPERT_TENSORS)
    embd = mf.tensors["token_embd.weight"]
    unread_embd = 0 if "output.weight" not in mf.tensors else embd.data.nbytes - embd.data.nbytes // embd.rows
    active = experts * hp.n_expert_used // hp.n_expert if hp.n_expert else 0
    kv = 2 * hp.n_layer * hp.n_head_kv * hp.head_dim * 2
    return MemoryPlan(total, experts, total - unread_embd - experts + active, kv)


def describe_memory(mf, total: int | None, available: int | None) -> list[tuple[str, str]]:
    """`sysinfer info`'s rows: weights and KV, what a decode token reads, what fits in the machine's
    `total` bytes of RAM and in the `available` ones (None: unknown)."""
    hp, plan = mf.hparams, memory_plan(mf)
    ctx_kv = plan.kv_bytes_per_token * hp.n_ctx_train
    rows = [("memory", f"weights {size(plan.weight_bytes)}; KV {plan.kv_bytes_per_token / 1024:.1f} KiB "
                       f"per token ({hp.n_ctx_train} tokens: {size(ctx_kv)})")]
    read = size(plan.token_read_bytes)
    if hp.n_expert:
        read += (f" ({hp.n_expert_used} of {hp.n_expert} experts: {size(plan.expert_bytes * hp.n_expert_used // hp.n_expert)}"
                 f" of their {size(plan.expert_bytes)})")
    rows.append(("read per token", read))
    if total:
        fits = [_fit(plan, total, "the machine")] + ([_fit(plan, available, "available now")] if available is not None else [])
        rows.append(("fits here", "; ".join(fits) + " (KV beside the weights: half of what they leave, as serve sizes it)"))
    return rows


def size(n: int) -> str:
    """Bytes as info shows them: GiB to 2 decimals from 1 GiB up, else MiB to 1 decimal."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _fit(plan: MemoryPlan, memory: int, what: str) -> str:
    tokens = plan.kv_tokens_that_fit(memory)
    return f"{what} {size(memory)}: " + (f"KV for {tokens} tokens" if tokens else "the weights alone do not fit")
