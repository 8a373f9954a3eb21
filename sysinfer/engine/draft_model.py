"""Draft-model speculation (`--draft-model FILE.gguf`): a small model of the target's vocabulary, in
the same process with its own KV cache, proposes each decoding sequence's next k tokens; the target
verifies them in its one step as it does prompt-lookup drafts (llm_engine.py).

Per engine step and sequence:
1. plan (`reserve`): how many tokens to draft, by the engine's policy (spec_policy.py: the accepted
   drafts expected from this request's record against what the target's extra rows and the draft
   model's own steps cost, both timed as they run), and the draft cache's blocks for them. After
   PROBE_START declined steps in a row the model drafts one token anyway, if a right one would pay
   (then after twice as many, up to PROBE_MAX): its record can only learn from drafts it makes.
2. execute, in the engine's step thread (`propose`): the draft model catches up on the tokens it has
   not seen (the prompt at first, then the token the target added and any accepted drafts), whose
   last row gives draft 1; then k - 1 single-token steps give drafts 2..k. Every sequence drafting in
   this step runs in the same draft calls. Greedy requests take the draft's argmax; sampled ones draw
   from the draft's distribution q (the request's penalties, temperature and filters applied to the
   draft's logits, the request's own generator), and q is kept for the acceptance rule
   (Sampler.verify).
3. postprocess (`after_verify`): the draft's K/V is kept up to the last accepted draft it computed;
   the rest of its blocks go back (the draft's own rollback).

By default prompt lookup still drafts first and the model drafts only where lookup finds nothing
(`lookup_first`): lookup's drafts cost nothing, so where the reply quotes its prompt the model's k
calls are saved (measured in docs/benchmarks.md); `--no-draft-lookup` drafts with the model only.
The model's calls are
extra native calls (k per step: unavoidable, each depends on the previous token), each on the
draft's own pinned thread pool with the GIL released, over step arrays its ModelRunner allocates once. The
draft's pool is separate from the target's: they never run at the same time (the target's step
waits for the drafts), and an idle pool's workers sleep after 300 us, so two pools cost no cores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .block_manager import BlockManager
from .model_runner import ModelRunner, StepPart
from .prompt_lookup import K_MAX
from .sampling import SamplingError
from .scheduler import ScheduledChunk
from .sequence import Sequence
from .spec_policy import REQUEST_DECAY, Acceptance, DraftPolicy
from .step_cost import StepCost

PROBE_START, PROBE_MAX = 16, 256  # declined steps before the model drafts one token to learn again

log = logging.getLogger("sysinfer.engine")


@dataclass(eq=False)
class DraftTrack:
    """One sequence in the draft model. It reads to the block manager as a sequence (block_table,
    len(), num_computed, hashed): len() is the tokens its blocks must hold."""
    block_table: list[int] = field(default_factory=list)  # the draft cache's block ids, in position order
    num_computed: int = 0   # leading tokens of the sequence whose K/V the draft cache holds
    length: int = 0         # tokens the blocks cover: num_computed, or more while drafting
    hashed: tuple[int, int | None] = (0, None)  # unused (no prefix cache in the draft)
    history: Acceptance | None = None  # how this request's model drafts fared (spec_policy.py)
    declined: int = 0       # steps in a row the policy declined the model's drafts
    probe_every: int = PROBE_START  # declined steps before a one-token probe
    base: int = 0           # len(sequence) when the current drafts were proposed
    n_draft: int = 0        # drafts to verify in the current step (cut at a stop token or a forbidden one)
    pending: int = 0        # drafts reserved for the model in this step (0: none, or prompt lookup's)
    from_lookup: bool = False  # this step's drafts came from prompt lookup (lookup_first)
    picked: int = 0         # drafts the model has given in the current step (some may be dropped)
    probs: list[np.ndarray | None] = field(default_factory=list)  # q of each draft (None: greedy)

    def __len__(self) -> int:
        return self.length


@dataclass
class DraftStats:
    calls: int = 0          # native draft steps
    seconds: float = 0.0    # spent in them, sampling included
    lookup_steps: int = 0   # sequence-steps drafted by prompt lookup instead (lookup_first)


class DraftModel:
    def __init__(self, model, max_batch: int, lookup_first: bool = True, policy: DraftPolicy | None = None,
                 clock=time.perf_counter):
        if model.max_out_rows < max_batch:
            raise ValueError(f"the draft model needs {max_batch} logits rows per step, has {model.max_out_rows}")
        self.model = model
        # Prompt lookup first, the model where nothing matches (the default: docs/benchmarks.md)
        self.lookup_first = lookup_first
        self.blocks = BlockManager(model.n_kv_blocks, model.block_size, enable_prefix_cache=False, watermark=0.0)
        self.tracks: dict[str, DraftTrack] = {}
        self.stats = DraftStats()
        self.policy = policy if policy is not None else DraftPolicy()
        self.cost, self.clock = StepCost(), clock  # what the draft model's steps cost, by tokens per call
        # The draft steps' arrays, allocated once and filled in place (model_runner.py): any step holds at
        # most max_step_tokens tokens of max_batch sequences, each with the blocks of n_ctx + K_MAX tokens.
        self.runner = ModelRunner(model, (model.max_step_tokens, max_batch, self.blocks.blocks_for(model.n_ctx + K_MAX)))

    # ---- plan (event loop) ----
    def reserve(self, seq: Sequence, limit: int) -> list[int]:
        """Placeholders for the tokens seq will draft in this step (filled by `propose`), with the
        draft cache's blocks for them; [] when limit < 1 or the draft cache is full."""
        track = self.tracks.get(seq.request_id)
        if track is None:
            track = self.tracks[seq.request_id] = DraftTrack(history=Acceptance(REQUEST_DECAY, self.policy.model_history))
        track.pending, track.from_lookup = 0, False
        if limit < 1:
            return []
        # A seeded sampled request's drafts come from its own generator: which steps draft must not
        # depend on timings, or the seed would not give the same reply twice. It drafts whatever is found.
        seeded = seq.params.seed is not None and not seq.params.greedy
        decide = self.policy.take_all if seeded else self.policy.decide
        if self.lookup_first:
            found = seq.state.draft(limit, decide)
            if found:
                track.from_lookup = True  # verified as deterministic drafts; the model catches up later
                self.stats.lookup_steps += 1
                return found
        k = self.policy.take_all([0.0] * limit) if seeded else self._choose(track, limit)
        if k < 1:
            return []
        track.length = len(seq) + k - 1  # the sequence's tokens, then drafts 1..k-1 get K/V
        if not self.blocks.can_append(track, 1):
            track.length = track.num_computed
            return []
        self.blocks.append_slots(track, 1)
        track.pending = k
        return [0] * k

    def _choose(self, track: DraftTrack, limit: int) -> int:
        """Tokens for the model to draft: the policy's choice (each draft token costs one of the
        model's one-token steps), or a one-token probe after enough declined steps."""
        per_token = self.cost.estimate(1) or 0.0  # unmeasured: the first draft measures it
        k = self.policy.decide(track.history.expected(limit), per_token)
        if k:
            track.declined = 0
            return k
        track.declined += 1
        if track.declined < track.probe_every:
            return 0
        track.declined, track.probe_every = 0, min(PROBE_MAX, 2 * track.probe_every)
        return self.policy.decide([1.0], per_token)  # only if even a right token would pay

    # ---- execute (step thread) ----
    def propose(self, plan: list[ScheduledChunk]) -> None:
        """Fills each drafting chunk's seq.draft_ids[:n_draft] with the draft model's tokens. A draft
        ends early at a stop token (kept: the target may confirm it) or at a token the request's
        grammar forbids (dropped); the chunk then verifies only what is left."""
        jobs = [(c, self.tracks[c.seq.request_id]) for c in plan
                if c.n_draft and self.tracks[c.seq.request_id].pending]
        if not jobs:
            return
        start = time.perf_counter()
        for chunk, track in jobs:
            track.base, track.n_draft, track.picked, track.probs = len(chunk.seq), chunk.n_draft, 0, []
        self._catch_up(jobs)
        for i in range(1, max(track.n_draft for _, track in jobs)):
            active = [(chunk.seq, track) for chunk, track in jobs if track.n_draft > i]
            if not active:
                break
            rows = self._run([(track, track.base + i - 1, [seq.draft_ids[i - 1]], True) for seq, track in active])
            for (seq, track), row in zip(active, rows):
                self._settle(seq, track, i, self._pick(seq, track, row, i))
        for chunk, track in jobs:
            track.num_computed = track.base + track.picked - 1  # drafts 1..picked-1 were run
            chunk.drop_drafts(track.n_draft)
        self.stats.seconds += time.perf_counter() - start

    def _settle(self, seq: Sequence, track: DraftTrack, i: int, token: int) -> None:
        """Draft i is `token`; the draft ends here if it is a stop token, or before it if the grammar
        forbids it (track.n_draft: the drafts to verify)."""
        seq.draft_ids[i] = token
        track.picked = i + 1
        usable = seq.state.allows_draft(seq.draft_ids[: i + 1])
        if usable <= i or seq.state.is_stop_token(token):
            track.n_draft = usable

    def _catch_up(self, jobs: list[tuple[ScheduledChunk, DraftTrack]]) -> None:
        """Runs every token of the jobs' sequences the draft has not seen, in as few calls as the
        draft's step size allows; the row of each sequence's last token gives its draft 1."""
        todo = {id(track): (chunk.seq, track) for chunk, track in jobs}
        budget_total = self.model.max_step_tokens
        while todo:
            parts, budget = [], budget_total
            for seq, track in list(todo.values()):
                if budget == 0:
                    break
                count = min(len(seq) - track.num_computed, budget)
                last = track.num_computed + count == len(seq)
                parts.append((track, track.num_computed, seq.tokens[track.num_computed : track.num_computed + count], last))
                budget -= count
            rows = self._run(parts)
            sampled = iter(rows)
            for track, _, tokens, last in parts:
                track.num_computed += len(tokens)
                if last:
                    seq, _ = todo.pop(id(track))
                    self._settle(seq, track, 0, self._pick(seq, track, next(sampled), 0))

    def _run(self, parts: list[tuple[DraftTrack, int, list[int], bool]]) -> np.ndarray:
        """One native draft step: parts are (track, first position, tokens, whether its last row samples).
        Returns the logits of the sampling rows [n, n_vocab] (a view the next call overwrites)."""
        inputs = self.runner.build([StepPart(tokens, pos, track.block_table, int(samples))
                                    for track, pos, tokens, samples in parts])
        self.stats.calls += 1
        t0 = self.clock()
        rows = self.model.step(*inputs)
        self.cost.observe(len(inputs.token_ids), self.clock() - t0)
        return rows

    def _pick(self, seq: Sequence, track: DraftTrack, row: np.ndarray, i: int) -> int:
        """Draft i from the draft model's logits: the argmax for greedy requests, else a draw from q
        (kept for verification). Penalties see the output so far and the drafts before this one."""
        sampler = seq.state.sampler
        generated = seq.output_ids + seq.draft_ids[:i]
        try:
            if sampler.params.greedy:
                track.probs.append(None)
                return sampler.sample(row, generated)
            q = sampler.probabilities(row, generated)
            token = int(sampler.rng.choice(q.size, p=q))
        except SamplingError:  # a broken draft (non-finite logits) must not fail the request:
            track.probs[i:] = [None]  # a fixed guess is a valid one-hot draft, verified as any other
            return 0
        track.probs.append(q)
        return token

    # ---- postprocess (event loop) ----
    def draft_probs(self, seq: Sequence) -> list[np.ndarray | None]:
        """q of each of seq's drafts in this step (None where the draft was an argmax)."""
        track = self.tracks.get(seq.request_id)
        return track.probs if track is not None and track.pending else []

    def after_verify(self, seq: Sequence, drafted: int, accepted: int) -> None:
        """Keep the draft's K/V through the last accepted draft it computed (drafts 1..k-1 were run,
        draft k was not), give back the rest, and record how the drafts fared."""
        track = self.tracks.get(seq.request_id)
        if track is None:
            return
        if track.from_lookup:
            seq.state.feedback(drafted, accepted)
            track.from_lookup = False
            return
        track.pending = 0
        track.num_computed = min(track.num_computed, track.base + accepted)
        track.length = track.num_computed
        self.blocks.trim(track)
        track.probs = []
        if drafted:  # a draft the grammar cut to nothing says nothing about the model's guesses
            track.history.record(drafted, accepted)
            if accepted:
                track.probe_every = PROBE_START

    def release(self, seq: Sequence) -> None:
        """The request is over: its draft blocks go back."""
        track = self.tracks.pop(seq.request_id, None)
        if track is not None and track.block_table:
            self.blocks.free(track)
