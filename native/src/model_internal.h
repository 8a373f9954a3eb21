// Helpers and tuning constants shared by the model's source files (model_*.cpp); not part of the
// core's interface.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels.h"
#include "model.h"

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

// Calls f(tile0, tile1) for chunks of tiles [0, n_tiles) of matmul number `op` of this step on node
// n, each chunk taken by whichever of the node's threads is free (an atomic counter per matmul and
// node, reset every step): on a shared machine a core slowed by a neighbour no longer holds the
// others at the next barrier. A chunk is a contiguous run of tiles, so each thread still streams
// weights sequentially; which thread computes a tile never changes its result.
//
// Chunks shrink as the matmul runs (guided scheduling: a share of what is left), so the last ones
// are small and the threads reach the next barrier together. With fixed chunks of a quarter of a
// thread's share, a prefill of the 8B shape left one thread waiting up to a whole chunk at the end
// of every matmul (128 tokens through the down matrix: ~3 ms a chunk), ~10 % of the step in
// `perf` (docs/benchmarks.md, "Prefill on the AVX-512 table").
template <class F>
void Model::for_tile_chunks(Node& n, int op, int n_tiles, const F& f) {
  std::atomic<int>& next = n.matmul_next[op];
  const int share = n.n_threads * kChunksPerThread;
  int c = next.load(std::memory_order_relaxed);
  while (c < n_tiles) {
    int chunk = std::max(kMinChunkTiles, (n_tiles - c) / share);
    chunk += chunk & 1;  // even: a chunk starts on an even tile, so pairs of tiles stay together
    if (!next.compare_exchange_weak(c, c + chunk, std::memory_order_relaxed)) continue;  // c reloaded
    f(c, std::min(n_tiles, c + chunk));
    c = next.load(std::memory_order_relaxed);
  }
}

}  // namespace sysinfer
