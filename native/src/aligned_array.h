// 64-byte aligned, zeroed arrays for the big buffers (weights, KV cache), on transparent huge pages
// where the kernel has them.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sysinfer {

// Weights and the KV cache are streamed every step: on 2 MiB pages (transparent huge pages, asked
// for before the first touch) a pass over them costs far fewer TLB misses. SYSINFER_HUGEPAGES=0
// turns the hint off.
template <class T>
inline std::shared_ptr<T> aligned_array(size_t count) {
  void* p = nullptr;
  size_t bytes = std::max<size_t>(count * sizeof(T), 64);
  const size_t huge = size_t(2) << 20;
  static const bool hugepages_off = [] {
    const char* v = std::getenv("SYSINFER_HUGEPAGES");
    return v && std::strcmp(v, "0") == 0;
  }();
  const bool big = bytes >= huge && !hugepages_off;
  bytes = (bytes + 63) / 64 * 64;  // not rounded to 2 MiB: a partial last page stays small pages
  if (posix_memalign(&p, big ? huge : 64, bytes) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (big) madvise(p, bytes, MADV_HUGEPAGE);  // a hint: ignored where THP is off
#endif
  std::memset(p, 0, bytes);
  return std::shared_ptr<T>(static_cast<T*>(p), [](T* q) { std::free(q); });
}

}  // namespace sysinfer
