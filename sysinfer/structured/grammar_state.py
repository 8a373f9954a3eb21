"""One request's grammar during generation: the allowed-token mask for the next token, computed
ahead (while the native step runs), and the tokens sampled under it.

The engine's order per step: `compute_mask()` in the mask thread while the model computes the logits,
then `allowed()` for the sampler, then `consume(token)` when the token is accepted. llguidance
releases the GIL while it computes a mask, so the mask really overlaps the native step.
"""

from __future__ import annotations

import numpy as np


class GrammarError(RuntimeError):
    """The grammar rejected a token or hit a limit (the request fails, the engine goes on)."""


class GrammarState:
    def __init__(self, matcher, n_vocab: int):
        self.matcher = matcher.deep_copy()  # this request's own parser state (the compiled one may be shared)
        self.n_vocab = n_vocab
        self.bitmask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)  # [ceil(n_vocab / 32)] bit i%32 of word i//32: token i allowed
        self._allowed = np.zeros(n_vocab, dtype=bool)                  # [n_vocab] the bitmask unpacked, for the sampler
        self._fresh = False  # bitmask holds the mask for the current state

    def compute_mask(self) -> None:
        """The next token's mask into self.bitmask (runs in the mask thread, GIL released inside)."""
        if self._fresh:
            return
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
        if self.matcher.is_error():
            raise GrammarError(f"the output grammar failed: {self.matcher.get_error().splitlines()[0][:200]}")
        self._fresh = True

    def allowed(self) -> np.ndarray:
        """[n_vocab] bool: the tokens the grammar allows next."""
        self.compute_mask()  # no-op when the mask thread already did it
        bits = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")
        self._allowed[:] = bits[: self.n_vocab]
        return self._allowed

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(f"the output grammar rejected token {token}: "
                               f"{self.matcher.get_error().splitlines()[0][:200]}")
        self._fresh = False

    @property
    def done(self) -> bool:
        """Nothing can follow (the grammar reached an end it can't extend): the reply ends here."""
        return self.matcher.is_stopped()
