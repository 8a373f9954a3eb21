// Helpers and tuning constants shared by the model's source files (model_*.cpp); not part of the
// core's interface.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace sysinfer {

// [begin, end) of n items for thread tid of nt: contiguous, balanced.
inline void split_range(int n, int tid, int nt, int* begin, int* end) {
  *begin = int(int64_t(n) * tid / nt);
  *end = int(int64_t(n) * (tid + 1) / nt);
}

[[noreturn]] inline void bad_input(const std::string& what) { throw std::invalid_argument(what); }

inline int block_size_of(WType t) { return block_elems(t); }

// Matrix groups of a layer, in the order of Layer::rows_seen; a layer runs 4 matmuls (one per group).
enum { kQKV = 0, kWO = 1, kGateUp = 2, kDown = 3, kGroups = 4 };

// Tokens per attention work item for prefill. Attention's softmax chunks (attention.h) hold at least
// kMinKeysPerChunk keys, more when the context would need more than kMaxKeyChunks of them (this bounds
// the split-K partials); the chunk size is fixed for a model, so it never depends on a step's shape.
constexpr int kAttnTokensPerItem = 32;
constexpr int kMinKeysPerChunk = 256;
constexpr int kMaxKeyChunks = 64;
constexpr int kAttnItemsPerThread = 4;  // split-K aims for this many items per thread
// Split-K is for sequences of at most this many tokens in a step (decode, and verify steps of 1 + k
// drafted tokens), and for at most this many such tokens in all; longer ones have items enough.
constexpr int kMaxSplitTokens = 16;
// Matmul work chunks (guided): each chunk is the tiles left / (threads * kChunksPerThread), never
// fewer than kMinChunkTiles (an even count: tile pairs stay whole).
constexpr int kChunksPerThread = 2;
constexpr int kMinChunkTiles = 8;

}  // namespace sysinfer
