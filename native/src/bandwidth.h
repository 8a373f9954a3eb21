// Memory read bandwidth of this machine, the ceiling of a decode step that streams every weight.
#pragma once

#include <cstddef>

namespace sysinfer {

// GB/s of reading a `bytes`-byte buffer (make it larger than the last-level cache) with n_threads
// threads, best of `repeats`. Each thread reads its share as four interleaved sequential streams,
// one load per 64-byte line, which is how far the hardware prefetcher lets a core go (one stream
// per thread reads 25-30% slower on a Xeon here). Touches the buffer once before timing.
double read_bandwidth_gbs(size_t bytes, int n_threads, int repeats);

}  // namespace sysinfer
