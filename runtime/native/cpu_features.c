/* What this CPU can run, read with CPUID and XGETBV (which also tell whether the OS saves
 * the vector registers). Built without any ISA flags, so it runs on every x86-64 CPU:
 * runtime/cpu.py asks it before loading a kernel library built for a given ISA. */
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t xgetbv0(void) {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}
#endif

/* Bits of the result (keep in step with runtime/cpu.py). */
enum {
  kAVX2 = 1 << 0,
  kFMA = 1 << 1,
  kAVX512F = 1 << 2,
  kAVX512BW = 1 << 3,
  kAVX512VL = 1 << 4,
  kAVX512VNNI = 1 << 5,
  kAVX512BF16 = 1 << 6,
  kAVX512FP16 = 1 << 7,
  kAVXVNNI = 1 << 8,
  kAMXTILE = 1 << 9,
  kAMXINT8 = 1 << 10,
  kAMXBF16 = 1 << 11,
};

uint64_t jaxlite_cpu_features(void) {
  uint64_t features = 0;
#if defined(__x86_64__) || defined(__i386__)
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
  const int osxsave = (ecx >> 27) & 1, fma = (ecx >> 12) & 1;
  if (!osxsave) return 0;
  const uint64_t xcr0 = xgetbv0();
  const int ymm = (xcr0 & 0x6) == 0x6;            /* SSE and AVX state */
  const int zmm = ymm && (xcr0 & 0xE0) == 0xE0;   /* opmask, ZMM0-15 high halves, ZMM16-31 */
  const int tiles = (xcr0 & 0x60000) == 0x60000;  /* AMX tile config and data */
  if (__get_cpuid_max(0, 0) < 7) return 0;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const unsigned int b7 = ebx, c7 = ecx, d7 = edx, subleaves = eax;
  unsigned int a71 = 0;
  if (subleaves >= 1) {
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    a71 = eax;
  }
  if (ymm && ((b7 >> 5) & 1)) features |= kAVX2;
  if (ymm && fma) features |= kFMA;
  if (ymm && ((a71 >> 4) & 1)) features |= kAVXVNNI;
  if (zmm) {
    if ((b7 >> 16) & 1) features |= kAVX512F;
    if ((b7 >> 30) & 1) features |= kAVX512BW;
    if ((b7 >> 31) & 1) features |= kAVX512VL;
    if ((c7 >> 11) & 1) features |= kAVX512VNNI;
    if ((a71 >> 5) & 1) features |= kAVX512BF16;
    if ((d7 >> 23) & 1) features |= kAVX512FP16;
  }
  if (tiles) {
    if ((d7 >> 24) & 1) features |= kAMXTILE;
    if ((d7 >> 25) & 1) features |= kAMXINT8;
    if ((d7 >> 22) & 1) features |= kAMXBF16;
  }
#endif
  return features;
}
