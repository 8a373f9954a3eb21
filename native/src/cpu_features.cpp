// Run-time CPU feature detection and the choice of kernel table.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

namespace sysinfer {

#if !defined(SYSINFER_HAVE_AVX2)
const Kernels* avx2_kernels() { return nullptr; }
#endif
#if !defined(SYSINFER_HAVE_NEON)
const Kernels* neon_kernels() { return nullptr; }
const Kernels* neon_dotprod_kernels() { return nullptr; }
#endif

CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (__get_cpuid(1, &a, &b, &c, &d)) {
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28);
    f.fma = c & (1u << 12);
    f.f16c = c & (1u << 29);
    bool ymm_enabled = false;
    if (osxsave && avx) {
      unsigned lo, hi;
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      ymm_enabled = (lo & 0x6) == 0x6;  // the OS saves XMM and YMM state
    }
    if (ymm_enabled && __get_cpuid_count(7, 0, &a, &b, &c, &d)) f.avx2 = b & (1u << 5);
    if (!ymm_enabled) f.fma = f.f16c = false;
  }
#elif defined(__aarch64__) && defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP);
  f.neon = hw & HWCAP_ASIMD;
  f.dotprod = hw & HWCAP_ASIMDDP;
#elif defined(__aarch64__)
  f.neon = true;
#endif
  return f;
}

namespace {
const Kernels* best_table(const CpuFeatures& f) {
  if (f.avx2 && f.fma && f.f16c && avx2_kernels()) return avx2_kernels();
  if (f.neon && f.dotprod && neon_dotprod_kernels()) return neon_dotprod_kernels();
  if (f.neon && neon_kernels()) return neon_kernels();
  return &generic_kernels();
}

const Kernels* table_by_name(const char* name, const CpuFeatures& f) {
  if (!std::strcmp(name, "generic")) return &generic_kernels();
  if (!std::strcmp(name, "avx2") && f.avx2 && f.fma && f.f16c) return avx2_kernels();
  if (!std::strcmp(name, "neon") && f.neon) return neon_kernels();
  if (!std::strcmp(name, "neon-dotprod") && f.neon && f.dotprod) return neon_dotprod_kernels();
  return nullptr;
}

const Kernels* choose() {
  const CpuFeatures f = detect_cpu_features();
  const char* forced = std::getenv("SYSINFER_KERNELS");
  if (forced && *forced) {
    if (const Kernels* k = table_by_name(forced, f)) return k;
    std::fprintf(stderr, "sysinfer: SYSINFER_KERNELS=%s is not available on this CPU/build; using %s\n", forced,
                 best_table(f)->name);
  }
  return best_table(f);
}
}  // namespace

const Kernels& select_kernels() {
  static const Kernels* chosen = choose();
  return *chosen;
}

}  // namespace sysinfer
