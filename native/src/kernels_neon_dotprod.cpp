// NEON kernel table with `sdot` (armv8.2-a+dotprod: Kunpeng 920 and later).
#define SYSINFER_NEON_DOTPROD 1
#include "kernels_neon_impl.h"

const sysinfer::Kernels* sysinfer::neon_dotprod_kernels() {
  static constexpr Kernels k = neon_table("neon-dotprod");
  return &k;
}
