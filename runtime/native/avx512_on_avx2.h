// The AVX-512 intrinsics the kernels use, for a build without AVX-512 (the AVX2 + FMA
// library, _kernels_avx2): each 512-bit vector is a pair of 256-bit halves, each mask a
// bit per lane as on AVX-512, and every name below is a macro for its AVX2 version, as
// SIMDe's native aliases do -- so one source of the element-wise kernels, quantization and
// epilogues serves both ISAs and computes the same values (float operations in the same
// order, the same rounding). Only the int8 GEMM's inner tile differs (gemm.cc): vpdpbusd
// has no AVX2 form. Masked loads never touch masked-off memory (vmaskmov, or byte by byte);
// reductions add in the order of GCC's _mm512_reduce_add_ps.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || !defined(__AVX2__) || !defined(__FMA__)
#error "avx512_on_avx2.h is for builds with AVX2 and FMA but without AVX-512"
#endif
#define JAXLITE_AVX512_ON_AVX2 1  // for the few places that take another route on AVX2

namespace jaxlite::avx2 {

struct F512 { __m256 lo, hi; };
struct I512 { __m256i lo, hi; };
using Mask16 = uint16_t;
using Mask64 = uint64_t;

// ---- masks ----

// The 8 lanes of half h of a 16-bit mask as all-ones / all-zeros 32-bit lanes.
inline __m256i lanes(Mask16 k, int h) {
  const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i v = _mm256_and_si256(_mm256_set1_epi32((k >> (8 * h)) & 0xFF), bits);
  return _mm256_cmpeq_epi32(v, bits);
}
inline Mask16 mask_of(__m256 lo, __m256 hi) {
  return static_cast<Mask16>(_mm256_movemask_ps(lo) | (_mm256_movemask_ps(hi) << 8));
}
inline Mask64 byte_mask_of(__m256i lo, __m256i hi) {
  return static_cast<uint32_t>(_mm256_movemask_epi8(lo)) |
         (static_cast<Mask64>(static_cast<uint32_t>(_mm256_movemask_epi8(hi))) << 32);
}

// ---- construction, casts, loads and stores ----

inline F512 set1_ps(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline F512 setzero_ps() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline I512 set1_epi32(int32_t x) { return {_mm256_set1_epi32(x), _mm256_set1_epi32(x)}; }
inline I512 set1_epi8(char x) { return {_mm256_set1_epi8(x), _mm256_set1_epi8(x)}; }
inline I512 setzero_si512() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
inline I512 setr_epi32(int a0, int a1, int a2, int a3, int a4, int a5, int a6, int a7, int a8, int a9, int a10,
                       int a11, int a12, int a13, int a14, int a15) {
  return {_mm256_setr_epi32(a0, a1, a2, a3, a4, a5, a6, a7), _mm256_setr_epi32(a8, a9, a10, a11, a12, a13, a14, a15)};
}
inline I512 castps_si512(F512 a) { return {_mm256_castps_si256(a.lo), _mm256_castps_si256(a.hi)}; }
inline F512 castsi512_ps(I512 a) { return {_mm256_castsi256_ps(a.lo), _mm256_castsi256_ps(a.hi)}; }

inline F512 loadu_ps(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline I512 loadu_si512(const void* p) {
  const __m256i* q = static_cast<const __m256i*>(p);
  return {_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1)};
}
inline void storeu_si512(void* p, I512 a) {
  __m256i* q = static_cast<__m256i*>(p);
  _mm256_storeu_si256(q, a.lo);
  _mm256_storeu_si256(q + 1, a.hi);
}
inline F512 maskz_loadu_ps(Mask16 k, const float* p) {
  if (k == 0xFFFF) return loadu_ps(p);
  return {_mm256_maskload_ps(p, lanes(k, 0)), _mm256_maskload_ps(p + 8, lanes(k, 1))};
}
inline I512 maskz_loadu_epi32(Mask16 k, const int32_t* p) {
  if (k == 0xFFFF) return loadu_si512(p);
  return {_mm256_maskload_epi32(reinterpret_cast<const int*>(p), lanes(k, 0)),
          _mm256_maskload_epi32(reinterpret_cast<const int*>(p) + 8, lanes(k, 1))};
}
inline void mask_storeu_ps(float* p, Mask16 k, F512 a) {
  if (k == 0xFFFF) {
    _mm256_storeu_ps(p, a.lo);
    _mm256_storeu_ps(p + 8, a.hi);
    return;
  }
  _mm256_maskstore_ps(p, lanes(k, 0), a.lo);
  _mm256_maskstore_ps(p + 8, lanes(k, 1), a.hi);
}
// Bytes: whole vectors where the mask is full, one memcpy where it is a prefix (a row's
// tail: every byte mask the kernels make), else byte by byte.
inline bool is_prefix(Mask64 k) { return (k & (k + 1)) == 0; }
inline I512 maskz_loadu_epi8(Mask64 k, const void* p) {
  if (k == ~Mask64(0)) return loadu_si512(p);
  alignas(32) uint8_t buffer[64] = {};
  if (is_prefix(k)) {
    std::memcpy(buffer, p, __builtin_popcountll(k));
  } else {
    for (int i = 0; i < 64; ++i)
      if (k >> i & 1) buffer[i] = static_cast<const uint8_t*>(p)[i];
  }
  return loadu_si512(buffer);
}
inline void store_bytes(void* p, Mask64 k, const uint8_t* buffer) {
  if (is_prefix(k)) {
    std::memcpy(p, buffer, __builtin_popcountll(k));
    return;
  }
  for (int i = 0; i < 64; ++i)
    if (k >> i & 1) static_cast<uint8_t*>(p)[i] = buffer[i];
}
inline void mask_storeu_epi8(void* p, Mask64 k, I512 a) {
  if (k == ~Mask64(0)) return storeu_si512(p, a);
  alignas(32) uint8_t buffer[64];
  storeu_si512(buffer, a);
  store_bytes(p, k, buffer);
}
inline void mask_storeu_epi8_128(void* p, Mask16 k, __m128i a) {
  if (k == 0xFFFF) return _mm_storeu_si128(static_cast<__m128i*>(p), a);
  alignas(16) uint8_t buffer[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(buffer), a);
  store_bytes(p, k, buffer);
}

// ---- float arithmetic ----

#define JAXLITE_F2(name, op) \
  inline F512 name(F512 a, F512 b) { return {op(a.lo, b.lo), op(a.hi, b.hi)}; }
JAXLITE_F2(add_ps, _mm256_add_ps)
JAXLITE_F2(sub_ps, _mm256_sub_ps)
JAXLITE_F2(mul_ps, _mm256_mul_ps)
JAXLITE_F2(div_ps, _mm256_div_ps)
JAXLITE_F2(min_ps, _mm256_min_ps)
JAXLITE_F2(max_ps, _mm256_max_ps)
#undef JAXLITE_F2
inline F512 fmadd_ps(F512 a, F512 b, F512 c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline F512 fnmadd_ps(F512 a, F512 b, F512 c) {
  return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
}
inline F512 abs_ps(F512 a) {
  const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  return {_mm256_and_ps(a.lo, m), _mm256_and_ps(a.hi, m)};
}
template <int Rounding>
inline F512 roundscale_ps(F512 a) {
  static_assert((Rounding & 0xF0) == 0, "roundscale to integers only");
  return {_mm256_round_ps(a.lo, Rounding), _mm256_round_ps(a.hi, Rounding)};
}
// a * 2^n for integral n in [-254, 254] (exp_ps's range), rounded once as vscalefps does:
// the power is applied in two exact halves, each a normal float.
inline __m256 scalef_half(__m256 a, __m256 n) {
  const __m256i e = _mm256_cvtps_epi32(n);
  const __m256i e1 = _mm256_srai_epi32(e, 1), e2 = _mm256_sub_epi32(e, e1);
  const auto power = [](__m256i x) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(127)), 23)); };
  return _mm256_mul_ps(_mm256_mul_ps(a, power(e1)), power(e2));
}
inline F512 scalef_ps(F512 a, F512 n) { return {scalef_half(a.lo, n.lo), scalef_half(a.hi, n.hi)}; }
// 1 / a exactly rounded: within rcp14's bound, so the Newton step after it gives the same
// ~1 ulp reciprocal.
inline F512 rcp14_ps(F512 a) { return div_ps(set1_ps(1.0f), a); }

template <int Predicate>
inline Mask16 cmp_ps_mask(F512 a, F512 b) {
  return mask_of(_mm256_cmp_ps(a.lo, b.lo, Predicate), _mm256_cmp_ps(a.hi, b.hi, Predicate));
}
inline F512 mask_mov_ps(F512 src, Mask16 k, F512 a) {
  return {_mm256_blendv_ps(src.lo, a.lo, _mm256_castsi256_ps(lanes(k, 0))),
          _mm256_blendv_ps(src.hi, a.hi, _mm256_castsi256_ps(lanes(k, 1)))};
}
inline F512 maskz_mov_ps(Mask16 k, F512 a) { return mask_mov_ps(setzero_ps(), k, a); }
inline F512 maskz_sub_ps(Mask16 k, F512 a, F512 b) { return maskz_mov_ps(k, sub_ps(a, b)); }
inline F512 mask_loadu_ps(F512 src, Mask16 k, const float* p) { return mask_mov_ps(src, k, maskz_loadu_ps(k, p)); }

// GCC's reduction order: the halves, then the 128-bit halves, then pairs.
template <typename Op>
inline float reduce_ps(F512 a, Op op) {
  const __m256 t = op(a.hi, a.lo);
  const __m128 u = op(_mm256_extractf128_ps(t, 1), _mm256_castps256_ps128(t));
  const __m128 v = op(u, _mm_shuffle_ps(u, u, _MM_SHUFFLE(1, 0, 3, 2)));
  return op(_mm_set_ss(v[0]), _mm_set_ss(v[1]))[0];
}
inline float reduce_add_ps(F512 a) {
  return reduce_ps(a, [](auto x, auto y) { return x + y; });
}
inline float reduce_max_ps(F512 a) {
  return reduce_ps(a, [](auto x, auto y) {
    if constexpr (sizeof(x) == 32) return _mm256_max_ps(x, y);
    else return _mm_max_ps(x, y);
  });
}
inline float reduce_min_ps(F512 a) {
  return reduce_ps(a, [](auto x, auto y) {
    if constexpr (sizeof(x) == 32) return _mm256_min_ps(x, y);
    else return _mm_min_ps(x, y);
  });
}

// ---- integers ----

#define JAXLITE_I2(name, op) \
  inline I512 name(I512 a, I512 b) { return {op(a.lo, b.lo), op(a.hi, b.hi)}; }
JAXLITE_I2(add_epi8, _mm256_add_epi8)
JAXLITE_I2(sub_epi8, _mm256_sub_epi8)
JAXLITE_I2(add_epi32, _mm256_add_epi32)
JAXLITE_I2(sub_epi32, _mm256_sub_epi32)
JAXLITE_I2(add_epi64, _mm256_add_epi64)
JAXLITE_I2(mullo_epi32, _mm256_mullo_epi32)
JAXLITE_I2(min_epi32, _mm256_min_epi32)
JAXLITE_I2(max_epi32, _mm256_max_epi32)
JAXLITE_I2(max_epu8, _mm256_max_epu8)
JAXLITE_I2(and_si512, _mm256_and_si256)
JAXLITE_I2(xor_si512, _mm256_xor_si256)
JAXLITE_I2(packs_epi32, _mm256_packs_epi32)  // per 128-bit lane, as on AVX-512
JAXLITE_I2(packs_epi16, _mm256_packs_epi16)
JAXLITE_I2(sad_epu8, _mm256_sad_epu8)
#undef JAXLITE_I2
template <int Shift>
inline I512 slli_epi32(I512 a) { return {_mm256_slli_epi32(a.lo, Shift), _mm256_slli_epi32(a.hi, Shift)}; }
inline I512 mask_mov_epi32(I512 src, Mask16 k, I512 a) {
  return {_mm256_blendv_epi8(src.lo, a.lo, lanes(k, 0)), _mm256_blendv_epi8(src.hi, a.hi, lanes(k, 1))};
}
inline I512 maskz_mov_epi32(Mask16 k, I512 a) { return mask_mov_epi32(setzero_si512(), k, a); }
inline Mask16 cmpeq_epi32_mask(I512 a, I512 b) {
  return mask_of(_mm256_castsi256_ps(_mm256_cmpeq_epi32(a.lo, b.lo)), _mm256_castsi256_ps(_mm256_cmpeq_epi32(a.hi, b.hi)));
}
inline Mask64 mask_testn_epi8_mask(Mask64 k, I512 a, I512 b) {
  const __m256i zero = _mm256_setzero_si256();
  return k & byte_mask_of(_mm256_cmpeq_epi8(_mm256_and_si256(a.lo, b.lo), zero),
                          _mm256_cmpeq_epi8(_mm256_and_si256(a.hi, b.hi), zero));
}
// (a & b) | c, the one ternary-logic function the kernels use (0xEA).
template <int Function>
inline I512 ternarylogic_epi32(I512 a, I512 b, I512 c) {
  static_assert(Function == 0xEA, "only (a & b) | c");
  return {_mm256_or_si256(_mm256_and_si256(a.lo, b.lo), c.lo), _mm256_or_si256(_mm256_and_si256(a.hi, b.hi), c.hi)};
}
inline I512 permutexvar_epi32(I512 index, I512 a) {
  const auto half = [&](__m256i idx) {
    const __m256i from_hi = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7));
    return _mm256_blendv_epi8(_mm256_permutevar8x32_epi32(a.lo, idx), _mm256_permutevar8x32_epi32(a.hi, idx), from_hi);
  };
  return {half(index.lo), half(index.hi)};
}
inline int32_t reduce_add_epi32(I512 a) {
  const __m256i t = _mm256_add_epi32(a.lo, a.hi);
  __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
  u = _mm_add_epi32(u, _mm_shuffle_epi32(u, _MM_SHUFFLE(1, 0, 3, 2)));
  u = _mm_add_epi32(u, _mm_shuffle_epi32(u, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(u);
}
inline int64_t reduce_add_epi64(I512 a) {
  const __m256i t = _mm256_add_epi64(a.lo, a.hi);
  const __m128i u = _mm_add_epi64(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
  return _mm_cvtsi128_si64(u) + _mm_extract_epi64(u, 1);
}

// ---- conversions ----

inline F512 cvtepi32_ps(I512 a) { return {_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)}; }
inline I512 cvtps_epi32(F512 a) { return {_mm256_cvtps_epi32(a.lo), _mm256_cvtps_epi32(a.hi)}; }
// 16 int32 -> 16 int8 in order: saturating (vpmovsdb) or truncating (vpmovdb).
inline __m128i cvtsepi32_epi8(I512 a) {
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(a.lo, a.hi), _MM_SHUFFLE(3, 1, 2, 0));
  return _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
}
inline __m128i cvtepi32_epi8(I512 a) {
  const __m256i low = _mm256_set1_epi32(0xFF);
  const I512 bytes{_mm256_and_si256(a.lo, low), _mm256_and_si256(a.hi, low)};
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(bytes.lo, bytes.hi), _MM_SHUFFLE(3, 1, 2, 0));
  return _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
}

}  // namespace jaxlite::avx2

// The AVX-512 names, for the shared kernel sources (GCC defines some as macros itself).
#undef __m512
#define __m512 jaxlite::avx2::F512
#undef __m512i
#define __m512i jaxlite::avx2::I512
#undef __mmask16
#define __mmask16 jaxlite::avx2::Mask16
#undef __mmask64
#define __mmask64 jaxlite::avx2::Mask64
#undef _mm512_set1_ps
#define _mm512_set1_ps jaxlite::avx2::set1_ps
#undef _mm512_setzero_ps
#define _mm512_setzero_ps jaxlite::avx2::setzero_ps
#undef _mm512_set1_epi32
#define _mm512_set1_epi32 jaxlite::avx2::set1_epi32
#undef _mm512_set1_epi8
#define _mm512_set1_epi8 jaxlite::avx2::set1_epi8
#undef _mm512_setzero_si512
#define _mm512_setzero_si512 jaxlite::avx2::setzero_si512
#undef _mm512_setr_epi32
#define _mm512_setr_epi32 jaxlite::avx2::setr_epi32
#undef _mm512_castps_si512
#define _mm512_castps_si512 jaxlite::avx2::castps_si512
#undef _mm512_castsi512_ps
#define _mm512_castsi512_ps jaxlite::avx2::castsi512_ps
#undef _mm512_loadu_ps
#define _mm512_loadu_ps jaxlite::avx2::loadu_ps
#undef _mm512_loadu_si512
#define _mm512_loadu_si512 jaxlite::avx2::loadu_si512
#undef _mm512_storeu_si512
#define _mm512_storeu_si512 jaxlite::avx2::storeu_si512
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps jaxlite::avx2::maskz_loadu_ps
#undef _mm512_maskz_loadu_epi32
#define _mm512_maskz_loadu_epi32 jaxlite::avx2::maskz_loadu_epi32
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps jaxlite::avx2::mask_storeu_ps
#undef _mm512_maskz_loadu_epi8
#define _mm512_maskz_loadu_epi8 jaxlite::avx2::maskz_loadu_epi8
#undef _mm512_mask_storeu_epi8
#define _mm512_mask_storeu_epi8 jaxlite::avx2::mask_storeu_epi8
#undef _mm_mask_storeu_epi8
#define _mm_mask_storeu_epi8 jaxlite::avx2::mask_storeu_epi8_128
#undef _mm512_add_ps
#define _mm512_add_ps jaxlite::avx2::add_ps
#undef _mm512_sub_ps
#define _mm512_sub_ps jaxlite::avx2::sub_ps
#undef _mm512_mul_ps
#define _mm512_mul_ps jaxlite::avx2::mul_ps
#undef _mm512_div_ps
#define _mm512_div_ps jaxlite::avx2::div_ps
#undef _mm512_min_ps
#define _mm512_min_ps jaxlite::avx2::min_ps
#undef _mm512_max_ps
#define _mm512_max_ps jaxlite::avx2::max_ps
#undef _mm512_fmadd_ps
#define _mm512_fmadd_ps jaxlite::avx2::fmadd_ps
#undef _mm512_fnmadd_ps
#define _mm512_fnmadd_ps jaxlite::avx2::fnmadd_ps
#undef _mm512_abs_ps
#define _mm512_abs_ps jaxlite::avx2::abs_ps
#undef _mm512_roundscale_ps
#define _mm512_roundscale_ps(a, r) jaxlite::avx2::roundscale_ps<(r)>(a)
#undef _mm512_scalef_ps
#define _mm512_scalef_ps jaxlite::avx2::scalef_ps
#undef _mm512_rcp14_ps
#define _mm512_rcp14_ps jaxlite::avx2::rcp14_ps
#undef _mm512_cmp_ps_mask
#define _mm512_cmp_ps_mask(a, b, p) jaxlite::avx2::cmp_ps_mask<(p)>((a), (b))
#undef _mm512_mask_mov_ps
#define _mm512_mask_mov_ps jaxlite::avx2::mask_mov_ps
#undef _mm512_maskz_mov_ps
#define _mm512_maskz_mov_ps jaxlite::avx2::maskz_mov_ps
#undef _mm512_maskz_sub_ps
#define _mm512_maskz_sub_ps jaxlite::avx2::maskz_sub_ps
#undef _mm512_mask_loadu_ps
#define _mm512_mask_loadu_ps jaxlite::avx2::mask_loadu_ps
#undef _mm512_reduce_add_ps
#define _mm512_reduce_add_ps jaxlite::avx2::reduce_add_ps
#undef _mm512_reduce_max_ps
#define _mm512_reduce_max_ps jaxlite::avx2::reduce_max_ps
#undef _mm512_reduce_min_ps
#define _mm512_reduce_min_ps jaxlite::avx2::reduce_min_ps
#undef _mm512_add_epi8
#define _mm512_add_epi8 jaxlite::avx2::add_epi8
#undef _mm512_sub_epi8
#define _mm512_sub_epi8 jaxlite::avx2::sub_epi8
#undef _mm512_add_epi32
#define _mm512_add_epi32 jaxlite::avx2::add_epi32
#undef _mm512_sub_epi32
#define _mm512_sub_epi32 jaxlite::avx2::sub_epi32
#undef _mm512_add_epi64
#define _mm512_add_epi64 jaxlite::avx2::add_epi64
#undef _mm512_mullo_epi32
#define _mm512_mullo_epi32 jaxlite::avx2::mullo_epi32
#undef _mm512_min_epi32
#define _mm512_min_epi32 jaxlite::avx2::min_epi32
#undef _mm512_max_epi32
#define _mm512_max_epi32 jaxlite::avx2::max_epi32
#undef _mm512_max_epu8
#define _mm512_max_epu8 jaxlite::avx2::max_epu8
#undef _mm512_and_si512
#define _mm512_and_si512 jaxlite::avx2::and_si512
#undef _mm512_xor_si512
#define _mm512_xor_si512 jaxlite::avx2::xor_si512
#undef _mm512_packs_epi32
#define _mm512_packs_epi32 jaxlite::avx2::packs_epi32
#undef _mm512_packs_epi16
#define _mm512_packs_epi16 jaxlite::avx2::packs_epi16
#undef _mm512_sad_epu8
#define _mm512_sad_epu8 jaxlite::avx2::sad_epu8
#undef _mm512_slli_epi32
#define _mm512_slli_epi32(a, s) jaxlite::avx2::slli_epi32<(s)>(a)
#undef _mm512_mask_mov_epi32
#define _mm512_mask_mov_epi32 jaxlite::avx2::mask_mov_epi32
#undef _mm512_maskz_mov_epi32
#define _mm512_maskz_mov_epi32 jaxlite::avx2::maskz_mov_epi32
#undef _mm512_cmpeq_epi32_mask
#define _mm512_cmpeq_epi32_mask jaxlite::avx2::cmpeq_epi32_mask
#undef _mm512_mask_testn_epi8_mask
#define _mm512_mask_testn_epi8_mask jaxlite::avx2::mask_testn_epi8_mask
#undef _mm512_ternarylogic_epi32
#define _mm512_ternarylogic_epi32(a, b, c, f) jaxlite::avx2::ternarylogic_epi32<(f)>((a), (b), (c))
#undef _mm512_permutexvar_epi32
#define _mm512_permutexvar_epi32 jaxlite::avx2::permutexvar_epi32
#undef _mm512_reduce_add_epi32
#define _mm512_reduce_add_epi32 jaxlite::avx2::reduce_add_epi32
#undef _mm512_reduce_add_epi64
#define _mm512_reduce_add_epi64 jaxlite::avx2::reduce_add_epi64
#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps jaxlite::avx2::cvtepi32_ps
#undef _mm512_cvtps_epi32
#define _mm512_cvtps_epi32 jaxlite::avx2::cvtps_epi32
#undef _mm512_cvtsepi32_epi8
#define _mm512_cvtsepi32_epi8 jaxlite::avx2::cvtsepi32_epi8
#undef _mm512_cvtepi32_epi8
#define _mm512_cvtepi32_epi8 jaxlite::avx2::cvtepi32_epi8
