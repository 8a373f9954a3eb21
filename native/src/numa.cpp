#include "numa.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sysinfer {

namespace {
constexpr int kMpolBind = 2;  // MPOL_BIND from <linux/mempolicy.h>

bool hugepages_off() {
  static const bool off = [] {
    const char* v = std::getenv("SYSINFER_HUGEPAGES");
    return v && std::strcmp(v, "0") == 0;
  }();
  return off;
}
}  // namespace

#if defined(__linux__)

std::shared_ptr<uint8_t> node_alloc(size_t bytes, int node, BindStatus* status) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096);
  const size_t huge = size_t(2) << 20;
  bytes = (std::max<size_t>(bytes, 64) + page - 1) / page * page;
  const bool big = bytes >= huge && !hugepages_off();
  const size_t align = big ? huge : page;
  const size_t mapped = bytes + (big ? huge : 0);
  void* raw = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t lo = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (lo + align - 1) / align * align;
  if (start > lo) munmap(raw, start - lo);  // trim to the alignment at both ends
  const uintptr_t end = start + bytes, map_end = lo + mapped;
  if (map_end > end) munmap(reinterpret_cast<void*>(end), map_end - end);
  uint8_t* p = reinterpret_cast<uint8_t*>(start);
#ifdef MADV_HUGEPAGE
  if (big) madvise(p, bytes, MADV_HUGEPAGE);  // a hint: ignored where THP is off
#endif
  BindStatus st = BindStatus::kNotAsked;
  if (node >= 0) {
    st = BindStatus::kFailed;
#ifdef SYS_mbind
    std::vector<unsigned long> mask(size_t(node) / (8 * sizeof(unsigned long)) + 1, 0);
    mask[size_t(node) / (8 * sizeof(unsigned long))] |= 1UL << (size_t(node) % (8 * sizeof(unsigned long)));
    const unsigned long maxnode = mask.size() * 8 * sizeof(unsigned long) + 1;
    if (syscall(SYS_mbind, p, bytes, kMpolBind, mask.data(), maxnode, 0) == 0) st = BindStatus::kBound;
#endif
  }
  if (status) *status = st;
  std::memset(p, 0, bytes);  // first touch: the pages are placed now, by the policy above
  return std::shared_ptr<uint8_t>(p, [bytes](uint8_t* q) { munmap(q, bytes); });
}

int node_of_address(const void* p) {
#ifdef SYS_move_pages
  const size_t page = size_t(sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096);
  void* pages[1] = {reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) / page * page)};
  int status[1] = {-1};
  if (syscall(SYS_move_pages, 0, 1UL, pages, nullptr, status, 0) == 0 && status[0] >= 0) return status[0];
#endif
  return -1;
}

std::map<int, size_t> page_nodes(const void* p, size_t bytes) {
  std::map<int, size_t> out;
  if (!p || bytes == 0) return out;
  const size_t page = size_t(sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096);
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) / page * page;
  const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + bytes - 1) / page * page;
  const size_t n_pages = (last - first) / page + 1;
  constexpr size_t kBatch = 1024;  // pages per move_pages call
  std::vector<void*> pages(kBatch);  // [kBatch] addresses of one batch
  std::vector<int> status(kBatch);   // [kBatch] node of each, or -errno
  for (size_t done = 0; done < n_pages; done += kBatch) {
    const size_t n = std::min(kBatch, n_pages - done);
    for (size_t i = 0; i < n; ++i) pages[i] = reinterpret_cast<void*>(first + (done + i) * page);
    bool ok = false;
#ifdef SYS_move_pages
    ok = syscall(SYS_move_pages, 0, static_cast<unsigned long>(n), pages.data(), nullptr, status.data(), 0) == 0;
#endif
    for (size_t i = 0; i < n; ++i) out[ok && status[i] >= 0 ? status[i] : -1] += 1;
  }
  return out;
}

#else  // not Linux: no binding

std::shared_ptr<uint8_t> node_alloc(size_t bytes, int node, BindStatus* status) {
  void* p = nullptr;
  bytes = (std::max<size_t>(bytes, 64) + 63) / 64 * 64;
  if (posix_memalign(&p, 64, bytes) != 0) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  if (status) *status = node >= 0 ? BindStatus::kFailed : BindStatus::kNotAsked;
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [](uint8_t* q) { std::free(q); });
}

int node_of_address(const void*) { return -1; }

std::map<int, size_t> page_nodes(const void* p, size_t bytes) {
  std::map<int, size_t> out;
  if (p && bytes) out[-1] = (bytes + 4095) / 4096;
  return out;
}

#endif

}  // namespace sysinfer
