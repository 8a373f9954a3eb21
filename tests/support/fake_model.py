"""A deterministic stand-in for LoadedModel with the same step() contract, for engine tests.

It stores the token written at every KV slot and derives each "next token" only from the tokens it
reads back through the block table for positions 0..p, so a wrong block table, a bad prefix-cache
hit or a broken preemption changes the output.
"""

from __future__ import annotations

import zlib

import numpy as np


class FakeModel:
    def __init__(self, n_kv_blocks: int = 64, block_size: int = 4, n_ctx: int = 512, n_vocab: int = 50,
                 max_step_tokens: int = 64, max_out_rows: int = 16):
        self.n_kv_blocks, self.block_size, self.n_ctx, self.n_vocab = n_kv_blocks, block_size, n_ctx, n_vocab
        self.max_step_tokens, self.max_out_rows = max_step_tokens, max_out_rows
        self.slots = np.full(n_kv_blocks * block_size, -1, dtype=np.int64)  # token id stored at each KV slot
        self.steps = []  # (n_tok, n_seq) per call

    @staticmethod
    def next_token(context: list[int], n_vocab: int) -> int:
        return 1 + zlib.crc32(np.asarray(context, dtype=np.int64).tobytes()) % (n_vocab - 1)  # never 0 (eos)

    def step(self, token_ids, positions, seq_starts, block_tables, context_lens, logits_rows):
        n_tok = len(token_ids)
        assert 0 < n_tok <= self.max_step_tokens and len(logits_rows) <= self.max_out_rows
        self.steps.append((n_tok, len(context_lens)))
        bs = self.block_size
        for s in range(len(context_lens)):
            table = block_tables[s]
            for t in range(seq_starts[s], seq_starts[s + 1]):
                p = positions[t]
                assert p == context_lens[s] - (seq_starts[s + 1] - t)
                block = table[p // bs]
                assert 0 <= block < self.n_kv_blocks
                self.slots[block * bs + p % bs] = token_ids[t]
        out = np.zeros((len(logits_rows), self.n_vocab), dtype=np.float32)
        for i, row in enumerate(logits_rows):
            s = int(np.searchsorted(seq_starts, row, side="right") - 1)
            p = positions[row]
            table = block_tables[s]
            context = [int(self.slots[table[q // bs] * bs + q % bs]) for q in range(p + 1)]
            assert -1 not in context, "read a KV slot nobody wrote"
            out[i, self.next_token(context, self.n_vocab)] = 10.0
        return out


class FakeTokenizer:
    """Token i is the letter chr(ord('a') + i % 26); 0 is the end of text."""

    stop_ids = {0}
    eos_id = 0

    def decode(self, ids, skip_special: bool = False) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids if i != 0)


def expected_tokens(prompt: list[int], n: int, n_vocab: int = 50) -> list[int]:
    """What the fake model generates greedily for a prompt when run alone."""
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(FakeModel.next_token(tokens, n_vocab))
    return tokens[len(prompt):]


class FakeReplicas:
    """A stand-in for ReplicatedModel (--numa replicate): one FakeModel per lane; make_core builds
    Lanes over `replicas`, other attributes are lane 0's, as in ReplicatedModel."""

    def __init__(self, n_lanes: int = 2, **kwargs):
        self.replicas = [FakeModel(**kwargs) for _ in range(n_lanes)]

    def __getattr__(self, name: str):
        return getattr(self.replicas[0], name)


class FakeClock:
    """A clock that only moves when a model's step says what it cost (for the engine's `clock`)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CostedModel(FakeModel):
    """FakeModel whose every step advances `clock` by cost(n_tok) seconds: the engine's step timings
    (and so its drafting policy) see a chosen cost curve, never this machine's. `next_token`
    (context, n_vocab) -> token replaces the fake model's text when given."""

    def __init__(self, clock: FakeClock, cost, next_token=None, **kw):
        super().__init__(**kw)
        self.clock, self.cost = clock, cost
        if next_token is not None:
            self.next_token = next_token

    def step(self, token_ids, *args):
        self.clock.now += self.cost(len(token_ids))
        return super().step(token_ids, *args)


class ScriptedModel(FakeModel):
    """FakeModel whose reply is `script` (token ids), set by the test: at each row it prefers the
    script's next token after the longest start of the script the context ends with (its first
    token when none: the prompt), and `eos` after its last. Found from the context alone, so it
    holds under prefix caching, chunked prefill and drafts; a grammar's mask may still choose another
    token, which the next rows then follow from the script's start."""

    kernels, n_threads = "fake", 1  # what the server's start-up line reports

    def __init__(self, script: list[int] = (), eos: int = 0, **kw):
        kw = {"n_kv_blocks": 512, "block_size": 16, "n_ctx": 4096, **kw}
        super().__init__(**kw)
        self.script, self.eos = list(script), eos

    def next_token(self, context: list[int], n_vocab: int) -> int:
        s = self.script
        for k in range(min(len(s), len(context)), 0, -1):
            if context[-k:] == s[:k]:
                return s[k] if k < len(s) else self.eos
        return s[0] if s else self.eos
