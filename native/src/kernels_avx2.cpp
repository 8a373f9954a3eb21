// AVX2 + FMA + F16C kernel table (compiled with -mavx2 -mfma -mf16c; chosen at run time).
#include "kernels.h"

namespace sysinfer {

const Kernels* avx2_kernels() { return nullptr; }  // not written yet: the generic table runs

}  // namespace sysinfer
