// Run-time CPU feature detection and the choice of kernel table.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

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
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif
#endif

namespace sysinfer {

#if !defined(SYSINFER_HAVE_AVX2)
const Kernels* avx2_kernels() { return nullptr; }
#endif
#if !defined(SYSINFER_HAVE_AVX512)
const Kernels* avx512_kernels() { return nullptr; }
#endif
#if !defined(SYSINFER_HAVE_NEON)
const Kernels* neon_kernels() { return nullptr; }
const Kernels* neon_dotprod_kernels() { return nullptr; }
#endif
#if !defined(SYSINFER_HAVE_NEON_I8MM)
const Kernels* neon_i8mm_kernels() { return nullptr; }
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
    bool zmm_enabled = false;  // the OS also saves the opmask registers and all 32 zmm (XCR0 bits 5-7)
    if (osxsave && avx) {
      unsigned lo, hi;
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      zmm_enabled = (lo & 0xE6) == 0xE6;
    }
    if (ymm_enabled && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
      f.avx2 = b & (1u << 5);
      const bool avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
      const bool vnni = c & (1u << 11);
      f.avx512 = zmm_enabled && avx512f && avx512bw && avx512vl && vnni && f.avx2 && f.fma && f.f16c;
    }
    if (!ymm_enabled) f.fma = f.f16c = false;
  }
#elif defined(__aarch64__) && defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP);
  f.neon = hw & HWCAP_ASIMD;
  f.dotprod = hw & HWCAP_ASIMDDP;
  f.i8mm = getauxval(AT_HWCAP2) & HWCAP2_I8MM;
#elif defined(__aarch64__)
  f.neon = true;
#endif
  return f;
}

int compiled_tables(const Kernels* out[], int max) {
  int n = 0;
  for (const Kernels* k : {&generic_kernels(), avx2_kernels(), avx512_kernels(), neon_kernels(), neon_dotprod_kernels(),
                           neon_i8mm_kernels()})
    if (k && n < max) out[n++] = k;
  return n;
}

bool cpu_runs(const Kernels& k, const CpuFeatures& f) {
  if (&k == avx2_kernels()) return f.avx2 && f.fma && f.f16c;
  if (&k == avx512_kernels()) return f.avx512;
  if (&k == neon_kernels()) return f.neon;
  if (&k == neon_dotprod_kernels()) return f.neon && f.dotprod;
  if (&k == neon_i8mm_kernels()) return f.neon && f.dotprod && f.i8mm;  // built on the dotprod table
  return &k == &generic_kernels();
}

namespace {
// Best first: the first compiled table this CPU runs.
const Kernels* best_table(const CpuFeatures& f) {
  for (const Kernels* k : {avx512_kernels(), avx2_kernels(), neon_i8mm_kernels(), neon_dotprod_kernels(), neon_kernels()})
    if (k && cpu_runs(*k, f)) return k;
  return &generic_kernels();
}

const Kernels* table_by_name(const char* name, const CpuFeatures& f) {
  const Kernels* all[8];
  const int n = compiled_tables(all, 8);
  for (int i = 0; i < n; ++i)
    if (!std::strcmp(name, all[i]->name) && cpu_runs(*all[i], f)) return all[i];
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
