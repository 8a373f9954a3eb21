"""One request's grammar during generation: the allowed-token masks for the rows it samples next,
computed ahead (while the native step runs), and the tokens sampled under them.

The engine's order per step: `compute_masks(drafts)` in the mask thread while the model computes the
logits, then `allowed()` for the sampler, then `consume(token)` when the token is accepted. llguidance
releases the GIL while it computes a mask, so the masks really overlap the native step.

Speculative drafts (engine/prompt_lookup.py, engine/draft_model.py) are checked against the grammar
when they are proposed (`valid_prefix`: a drafted token the grammar forbids ends the draft). A step
that verifies k drafts samples k + 1 rows, and row i's mask is the grammar's after drafts[:i]: the
mask thread consumes the drafts one by one, computes each row's mask, and rolls the matcher back.
Row i is only sampled when drafts[:i] were all accepted, i.e. consumed for real, so `allowed()`
takes the row matching what has been consumed since the masks were computed.
"""

from __future__ import annotations

import numpy as np

from ..limits import K_MAX


class GrammarError(RuntimeError):
    """The grammar rejected a token or hit a limit (the request fails, the engine goes on)."""


class GrammarState:
    def __init__(self, matcher, n_vocab: int):
        self.matcher = matcher.deep_copy()  # this request's own parser state (the compiled one may be shared)
        self.n_vocab = n_vocab
        words = (n_vocab + 31) // 32
        # [1 + K_MAX, ceil(n_vocab / 32)] row i: the mask after drafts[:i]; bit j%32 of word j//32: token j allowed
        self.bitmasks = np.zeros((1 + K_MAX, words), dtype=np.int32)
        self._allowed = np.zeros(n_vocab, dtype=bool)  # [n_vocab] one row of bitmasks unpacked, for the sampler
        self._masks_for: tuple[int, ...] | None = None  # the drafts the rows were computed for (None: stale)
        self._rows = 0       # rows computed (fewer than 1 + drafts when the grammar ends inside the draft)
        self._consumed = 0   # tokens consumed since, all equal to the drafts' start

    def compute_masks(self, drafts: list[int] | tuple[int, ...] = ()) -> None:
        """Masks for the next token and, with drafts, for the token after each of them (runs in the
        mask thread, GIL released inside). The drafts must be ones `valid_prefix` accepted."""
        drafts = tuple(drafts[:K_MAX])
        if self._masks_for == drafts and self._consumed == 0:
            return
        self._masks_for, self._rows, self._consumed = None, 0, 0
        self._compute_row(0)
        consumed = 0
        try:
            for i, token in enumerate(drafts, start=1):
                if self.matcher.is_stopped():  # the reply ends inside the draft: no later row samples
                    break
                if not self.matcher.consume_token(token):
                    raise GrammarError(f"the output grammar rejected drafted token {token}: "
                                       f"{self.matcher.get_error().splitlines()[0][:200]}")
                consumed += 1
                self._compute_row(i)
        finally:
            if consumed and not self.matcher.rollback(consumed):
                raise GrammarError(f"the output grammar could not roll back a draft: {self.matcher.get_error()[:200]}")
        self._masks_for, self._rows = drafts, 1 + consumed

    def _compute_row(self, i: int) -> None:
        row = self.bitmasks[i]
        self.matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)
        if self.matcher.is_error():
            raise GrammarError(f"the output grammar failed: {self.matcher.get_error().splitlines()[0][:200]}")

    def allowed(self) -> np.ndarray:
        """[n_vocab] bool: the tokens the grammar allows next."""
        if self._masks_for is None or self._consumed >= self._rows:
            self.compute_masks(())  # not computed ahead (or past the computed rows): now
        bits = np.unpackbits(self.bitmasks[self._consumed].view(np.uint8), bitorder="little")
        self._allowed[:] = bits[: self.n_vocab]
        return self._allowed

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(f"the output grammar rejected token {token}: "
                               f"{self.matcher.get_error().splitlines()[0][:200]}")
        drafts = self._masks_for
        if drafts is not None and self._consumed < len(drafts) and drafts[self._consumed] == token:
            self._consumed += 1  # the next row's mask was computed for exactly this state
        else:
            self._masks_for = None

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens` the grammar allows in a row from here (a draft is cut there)."""
        return self.matcher.validate_tokens(tokens) if tokens else 0

    def forced(self, limit: int) -> list[int]:
        """Up to `limit` tokens the grammar forces next (e.g. a JSON key and its quotes): a draft
        that costs no lookup and that the model accepts unless it spells the same bytes otherwise."""
        return self.matcher.compute_ff_tokens()[:limit] if limit > 0 else []

    @property
    def done(self) -> bool:
        """Nothing can follow (the grammar reached an end it can't extend): the reply ends here."""
        return self.matcher.is_stopped()
