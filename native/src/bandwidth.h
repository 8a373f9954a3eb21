// Memory read bandwidth of this machine, the ceiling of a decode step that streams every weight.
#pragma once

#include <cstddef>

namespace sysinfer {

// GB/s of reading a `bytes`-byte buffer (make it larger than the last-level cache) with n_threads
// threads, best of `repeats`. Each thread reads its share as four interleaved sequential streams,
// one load per 64-byte line (one stream per thread reads 25-30% slower on a Xeon here), once as the
// hardware prefetcher alone lets a core go and once with the decode GEMV's software prefetch
// (kGemvPrefetchBytes ahead, its hint); the faster walk is the machine's read ceiling. The plain walk
// alone understated it where the prefetch pays: on an Intel Xeon (family 6 model 167, 2 threads, 1
// GiB on huge pages) 31.0-31.7 GB/s against 35.2-35.6 with the prefetch, and the Q4_0 / Q8_0 decode
// GEMV read 34-36 GB/s, above the plain "ceiling". The buffer is on huge pages, as the weights are.
double read_bandwidth_gbs(size_t bytes, int n_threads, int repeats);

}  // namespace sysinfer
