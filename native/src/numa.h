// Memory placed on one NUMA node, through the kernel's own system calls (mbind(2), move_pages(2)
// as raw syscalls: no libnuma at build or run time). On a kernel without NUMA support the calls
// fail and memory is placed as usual (the status says so).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>

namespace sysinfer {

// Outcome of binding one allocation to a node.
enum class BindStatus : int {
  kNotAsked = 0,  // node < 0: placed by the kernel (first touch)
  kBound = 1,     // mbind(MPOL_BIND) succeeded before the first touch
  kFailed = 2,    // mbind failed (no NUMA in this kernel, node without memory, ...): placed by the kernel
};

// `bytes` of zeroed, 64-byte aligned memory (page aligned; on 2 MiB pages where the kernel has
// transparent huge pages and the size warrants it, as aligned_array), bound to OS node `node`
// (node < 0: not bound) before it is touched. The memory is touched (zeroed) here, so its pages
// are resident on return. *status (optional) reports the binding.
std::shared_ptr<uint8_t> node_alloc(size_t bytes, int node, BindStatus* status = nullptr);

template <class T>
std::shared_ptr<T> node_array(size_t count, int node, BindStatus* status = nullptr) {
  std::shared_ptr<uint8_t> raw = node_alloc(count * sizeof(T), node, status);
  return std::shared_ptr<T>(raw, reinterpret_cast<T*>(raw.get()));
}

// The OS node holding the page of address p (move_pages(2) query), or -1 when unknown.
int node_of_address(const void* p);

// How many pages of [p, p + bytes) each OS node holds (move_pages(2) query of every page), for
// the NUMA tests and reports: node -> pages; key -1 counts pages whose node the kernel didn't give
// (not resident, or no NUMA support). Pages are the base page size (a huge page counts as many).
std::map<int, size_t> page_nodes(const void* p, size_t bytes);

}  // namespace sysinfer
