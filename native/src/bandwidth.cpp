#include "bandwidth.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "aligned_array.h"
#include "kernels.h"  // the GEMV's prefetch distance and hint

namespace sysinfer {

namespace {

constexpr size_t kLine = 64;
constexpr int kStreams = 4;

// Sum of one word per cache line of p[0, n), walking kStreams quarters of it side by side; with
// Prefetch, each stream also asks for the line kGemvPrefetchBytes ahead, as the decode GEMV does.
template <bool Prefetch>
uint64_t read_streams(const uint8_t* p, size_t n) {
  const size_t quarter = n / kStreams;  // n is a multiple of kStreams * kLine
  uint64_t sum[kStreams] = {};
  for (size_t off = 0; off < quarter; off += kLine)
    for (int s = 0; s < kStreams; ++s) {
      const uint8_t* line = p + s * quarter + off;
      // A hint only: past the buffer's end it is dropped, never a fault. Each stream's prefetch goes
      // before its load: GCC -O3 hoisted the four loads above the four prefetches, and that walk read
      // 33 GB/s on the Intel Xeon where this one reads 35 (the empty asm keeps the order).
      if (Prefetch) {
        __builtin_prefetch(line + kGemvPrefetchBytes, 0, kGemvPrefetchLocality);
        asm volatile("" ::: "memory");
      }
      uint64_t v;
      std::memcpy(&v, line, sizeof v);
      sum[s] += v;
    }
  return std::accumulate(sum, sum + kStreams, uint64_t(0));
}

// GB/s of one timed pass of every thread over its share with read_streams<Prefetch>.
template <bool Prefetch>
double timed_pass(const uint8_t* buf, size_t share, int n_threads, std::vector<uint64_t>& sums) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < n_threads; ++t)
    threads.emplace_back([&, t] { sums[t] = read_streams<Prefetch>(buf + t * share, share); });
  for (auto& t : threads) t.join();
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(share * n_threads) / sec / 1e9;
}

}  // namespace

double read_bandwidth_gbs(size_t bytes, int n_threads, int repeats) {
  n_threads = std::max(1, n_threads);
  const size_t unit = kLine * kStreams;  // a share reads whole lines in every stream: all bytes counted
  const size_t share = bytes / size_t(n_threads) / unit * unit;
  // [n_threads][share], zeroed (so touched) on huge pages as the weights are.
  const std::shared_ptr<uint8_t> buf = aligned_array<uint8_t>(share * n_threads);
  std::vector<uint64_t> sums(n_threads);
  double best = 0;
  for (int r = 0; r < std::max(1, repeats); ++r)  // each repeat both walks, the plain one first
    best = std::max({best, timed_pass<false>(buf.get(), share, n_threads, sums),
                     timed_pass<true>(buf.get(), share, n_threads, sums)});
  volatile uint64_t sink = 0;
  for (uint64_t s : sums) sink = sink + s;
  return best;
}

}  // namespace sysinfer
