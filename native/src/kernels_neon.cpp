// Plain NEON kernel table (armv8-a): for aarch64 CPUs without the dot-product extension.
#define SYSINFER_NEON_DOTPROD 0
#include "kernels_neon_impl.h"

const sysinfer::Kernels* sysinfer::neon_kernels() {
  static constexpr Kernels k = neon_table("neon");
  return &k;
}
