// Vector math of the kernels (AVX-512 intrinsics; avx512_on_avx2.h maps them for the AVX2
// build): the activations of dialects/fused.py and the int8
// scheme of dialects/int8.py, with the same float operations as the XLA path. NaN passes
// through every function as it does through jax's: max_ps/min_ps return their second
// operand when either is NaN, so the value is always the second operand of a clamp.
#pragma once

#include "common.h"

namespace jaxlite {

// exp(x) to ~1 ulp (Cephes' expf: x = n ln2 + r, a degree-7 polynomial in r, times 2^n).
__attribute__((always_inline)) inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.3762626647949f), _mm512_max_ps(_mm512_set1_ps(-88.3762626647949f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __m512 sigmoid_ps(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// tanh(x): the rational approximation XLA and Eigen use for float32 (tanh(x) = x where
// |x| < 0.0004, +-1 from |x| >= 7.9053). One division, no exp.
inline __m512 tanh_ps(__m512 x_in) {
  const __m512 x = _mm512_min_ps(_mm512_set1_ps(7.90531110763549805f),
                                 _mm512_max_ps(_mm512_set1_ps(-7.90531110763549805f), x_in));
  const __mmask16 tiny = _mm512_cmp_ps_mask(_mm512_abs_ps(x_in), _mm512_set1_ps(0.0004f), _CMP_LT_OQ);
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(-2.76076847742355e-16f), _mm512_set1_ps(2.00018790482477e-13f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-8.60467152213735e-11f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(5.12229709037114e-08f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(1.48572235717979e-05f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(6.37261928875436e-04f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(4.89352455891786e-03f));
  p = _mm512_mul_ps(x, p);
  __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(1.19825839466702e-06f), _mm512_set1_ps(1.18534705686654e-04f));
  q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(2.26843463243900e-03f));
  q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(4.89352518554385e-03f));
  const __m512 t = _mm512_mask_mov_ps(_mm512_div_ps(p, q), tiny, x_in);
  // beyond the clamp tanh is +-1 in float32: exactly, so that 1 + tanh(x) is exactly 0
  const __mmask16 saturated = _mm512_cmp_ps_mask(_mm512_abs_ps(x_in), _mm512_set1_ps(7.90531110763549805f),
                                                 _CMP_GE_OQ);
  const __m512 sign_one = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(
      _mm512_castps_si512(x_in), _mm512_set1_epi32(0x80000000), _mm512_set1_epi32(0x3f800000), 0xEA));
  return _mm512_mask_mov_ps(t, saturated, sign_one);
}

// erf(x): the rational approximation XLA and Eigen use for float32 (x clamped to +-4).
inline __m512 erf_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(4.0f), _mm512_max_ps(_mm512_set1_ps(-4.0f), x));
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-2.72614225801306e-10f);
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2.77068142495902e-08f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-2.10102402082508e-06f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-5.69250639462346e-05f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-7.34990630326855e-04f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-2.95459980854025e-03f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-1.60960333262415e-02f));
  p = _mm512_mul_ps(p, x);
  __m512 q = _mm512_set1_ps(-1.45660718464996e-05f);
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-2.13374055278905e-04f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-1.68282697438203e-03f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-7.37332916720468e-03f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(-1.42647390514189e-02f));
  return _mm512_div_ps(p, q);
}

// The activations of dialects/fused.py, in jax.nn's operation order.
// -inf * 0 in jax's formulas of silu and gelu: NaN there, where the approximations give -inf.
// y + min(0, x) * 0 adds NaN where x = -inf and -0 where x < 0 (leaving y as it is, -0
// included), +0 where x >= 0 (where y is not -0): the same values as a compare and blend,
// in three plain operations where the AVX2 build emulates the mask.
inline __m512 nan_at_minus_infinity(__m512 x, __m512 y) {
  const __m512 zero = _mm512_setzero_ps();
  return _mm512_add_ps(y, _mm512_mul_ps(_mm512_min_ps(zero, x), zero));
}

// Always inlined: called as a function, the AVX2 build passes and returns its 64-byte vector
// through the stack, and the reload stalled (a third of a GELU epilogue's time, perf).
__attribute__((always_inline)) inline __m512 activate(__m512 v, int32_t activation) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  switch (activation) {
    case kRelu: return _mm512_max_ps(zero, v);
    case kRelu6: return _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(zero, v));
    case kSigmoid: return sigmoid_ps(v);
    case kTanh: return tanh_ps(v);
    case kSilu: return nan_at_minus_infinity(v, _mm512_mul_ps(v, sigmoid_ps(v)));
    case kGeluTanh: {
      // x * 0.5 * (1 + tanh(z)), z = sqrt(2/pi) * (x + 0.044715 x^3), computed as the equal
      // x / (1 + exp(-2z)): ~20 vector ops where the tanh form takes ~30 and a division (the
      // epilogue of a transformer's first MLP GEMM was a third of its time). Where exp(-2z)
      // overflows the result is 0.
      const __m512 minus_two_z = _mm512_mul_ps(
          v, _mm512_fmadd_ps(_mm512_mul_ps(v, v), _mm512_set1_ps(-0.0713548162726f),
                             _mm512_set1_ps(-1.5957691216057308f)));
      const __m512 d = _mm512_add_ps(one, exp_ps(minus_two_z));
#if !defined(JAXLITE_AVX512_ON_AVX2)
      // rcp14 and one Newton step: the reciprocal to ~1 ulp, without a division
      __m512 r = _mm512_rcp14_ps(d);
      r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
      return nan_at_minus_infinity(v, _mm512_mul_ps(v, r));
#else
      // AVX2 has no rcp14 (its emulation divides): one division, correctly rounded
      return nan_at_minus_infinity(v, _mm512_div_ps(v, d));
#endif
    }
    case kGeluErf:  // x * (erf(x / sqrt(2)) + 1) / 2
      return _mm512_div_ps(
          _mm512_mul_ps(v, _mm512_add_ps(erf_ps(_mm512_div_ps(v, _mm512_set1_ps(1.4142135623730951f))), one)),
          _mm512_set1_ps(2.0f));
    default: return v;
  }
}

// The lanes of x that are NaN or +-Inf (exponent all ones; AVX512F only).
inline __mmask16 nonfinite(__m512 x) {
  const __m512i exponent = _mm512_set1_epi32(0x7f800000);
  return _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(x), exponent), exponent);
}

// round_half_even(x * inv_s) clamped to +-127 as int32, inv_s = 1 / s, and -128 (NaN's
// code) where x is not finite: the XLA path's quantize (dialects/int8.py: a multiply,
// since a zmm division costs ~10x as much). Clamping before rounding is the same (+-127 are
// integers), and cvtps_epi32 rounds half to even. Non-finite lanes are or-ed into ``bad``.
// (A NaN q from a NaN scale clamps to -127: such a row's result is NaN by its scale.)
inline __m512i quantize_epi32(__m512 x, __m512 inv_s, __mmask16& bad) {
  const __m512 q = _mm512_mul_ps(x, inv_s);
  const __m512i codes =
      _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f)));
#if !defined(JAXLITE_AVX512_ON_AVX2)
  const __mmask16 nan_code = nonfinite(x);
  bad |= nan_code;
  return _mm512_mask_mov_epi32(codes, nan_code, _mm512_set1_epi32(-128));
#else
  // AVX2: the non-finite lanes as compare results that blend directly (rebuilding lanes
  // from an emulated mask costs four more operations per 8 lanes)
  const __m256i exponent = _mm256_set1_epi32(0x7f800000), nan_code = _mm256_set1_epi32(-128);
  const auto lanes = [&](__m256 half) {
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(half), exponent), exponent);
  };
  const __m256i lo = lanes(x.lo), hi = lanes(x.hi);
  bad |= avx2::mask_of(_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi));
  return {_mm256_blendv_epi8(codes.lo, nan_code, lo), _mm256_blendv_epi8(codes.hi, nan_code, hi)};
#endif
}

inline __m512i quantize_epi32(__m512 x, __m512 inv_s) {
  __mmask16 bad = 0;
  return quantize_epi32(x, inv_s, bad);
}

// 64 floats -> round_half_even(x * inv_s) clamped to +-127 (-128 if not finite), plus 128,
// as 64 bytes in order: two saturating packs and one dword permute instead of four vpmovdb
// (2 uops each on Zen 4).
inline __m512i unsigned_bytes64(const float* x, __m512 inv_s, __mmask16& bad) {
  const __m512i q0 = quantize_epi32(_mm512_loadu_ps(x), inv_s, bad);
  const __m512i q1 = quantize_epi32(_mm512_loadu_ps(x + 16), inv_s, bad);
  const __m512i q2 = quantize_epi32(_mm512_loadu_ps(x + 32), inv_s, bad);
  const __m512i q3 = quantize_epi32(_mm512_loadu_ps(x + 48), inv_s, bad);
  // per 128-bit lane l: q0[4l..4l+3], q1[4l..], q2[4l..], q3[4l..] (values fit: no saturation)
  const __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(q0, q1), _mm512_packs_epi32(q2, q3));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_xor_si512(_mm512_permutexvar_epi32(order, bytes), _mm512_set1_epi8(static_cast<char>(0x80)));
}

// The asymmetric parameters of a dynamically quantized row (dialects/int8.py,
// asymmetric_params): lo = min(min x, 0), hi = max(max x, 0), scale = (hi * 0.5 - lo * 0.5)
// * (2 / 255 in float32) (1 for an all-zero row, NaN where x holds a NaN or an Inf), zero = clamp(round_half_even(
// -lo * (1 / scale)), 0, 255) - 128 (0 for a NaN scale).
inline void asymmetric_params(const float* x, int64_t n, float& scale, int32_t& zero) {
  __m512 vmin = _mm512_setzero_ps(), vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m512 v = _mm512_loadu_ps(x + k);
    bad |= nonfinite(v);
    vmin = _mm512_min_ps(vmin, v);
    vmax = _mm512_max_ps(vmax, v);
  }
  if (k < n) {  // masked-off lanes load 0, which changes neither bound
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - k), x + k);
    bad |= nonfinite(v);
    vmin = _mm512_min_ps(vmin, v);
    vmax = _mm512_max_ps(vmax, v);
  }
  if (bad) {
    scale = std::numeric_limits<float>::quiet_NaN();
    zero = 0;
    return;
  }
  const float lo = _mm512_reduce_min_ps(vmin), hi = _mm512_reduce_max_ps(vmax);
  const float raw = (hi * 0.5f - lo * 0.5f) * (2.0f / 255.0f);
  scale = raw > 0.0f ? raw : 1.0f;
  const float z = std::nearbyint(-lo * (1.0f / scale));
  zero = static_cast<int32_t>(std::min(255.0f, std::max(0.0f, z))) - 128;
}

// clamp(round_half_even(x * inv_s) + zero, -128, 127) (the int8 code of dialects/int8.py
// quantize_asymmetric), xor-ed with flip (0x80: + 128, unsigned for vpdpbusd; 0: the code
// itself): x * inv_s is clamped
// to +-256 first so it converts without overflow (the result clamps the same), and the
// signed saturating packs clamp to int8. 64 at a time as unsigned_bytes64, then 16, then a tail.
inline __m512i asymmetric_epi32(__m512 x, __m512 inv_s, __m512i zero) {
  const __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x, inv_s), _mm512_set1_ps(-256.0f)),
                                 _mm512_set1_ps(256.0f));
  return _mm512_add_epi32(_mm512_cvtps_epi32(q), zero);
}

inline void asymmetric_copy(uint8_t* dst, const float* src, int64_t n, float inv_scale, int32_t zero_point,
                            uint8_t flip_bits = 0x80) {
  const __m512 inv_s = _mm512_set1_ps(inv_scale);
  const __m512i zero = _mm512_set1_epi32(zero_point);
  const __m128i flip = _mm_set1_epi8(static_cast<char>(flip_bits));
  int64_t k = 0;
  for (; k + 64 <= n; k += 64) {
    const __m512i q0 = asymmetric_epi32(_mm512_loadu_ps(src + k), inv_s, zero);
    const __m512i q1 = asymmetric_epi32(_mm512_loadu_ps(src + k + 16), inv_s, zero);
    const __m512i q2 = asymmetric_epi32(_mm512_loadu_ps(src + k + 32), inv_s, zero);
    const __m512i q3 = asymmetric_epi32(_mm512_loadu_ps(src + k + 48), inv_s, zero);
    const __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(q0, q1), _mm512_packs_epi32(q2, q3));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_si512(dst + k, _mm512_xor_si512(_mm512_permutexvar_epi32(order, bytes),
                                                  _mm512_set1_epi8(static_cast<char>(flip_bits))));
  }
  for (; k + 16 <= n; k += 16) {
    const __m512i q = asymmetric_epi32(_mm512_loadu_ps(src + k), inv_s, zero);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm_xor_si128(_mm512_cvtsepi32_epi8(q), flip));
  }
  if (k < n) {
    const __mmask16 mask = tail_mask(n - k);
    const __m512i q = asymmetric_epi32(_mm512_maskz_loadu_ps(mask, src + k), inv_s, zero);
    _mm_mask_storeu_epi8(dst + k, mask, _mm_xor_si128(_mm512_cvtsepi32_epi8(q), flip));
  }
}

// dst[0:n] = round_half_even(src[0:n] * inv_s) clamped to +-127 (-128 where not finite),
// plus 128: 64 at a time, then whole vectors (plain loads and stores: masked ones are
// slow), then a masked tail. True where src holds a NaN or an Inf.
inline bool quantize_copy(uint8_t* dst, const float* src, int64_t n, __m512 inv_s) {
  const __m512i offset = _mm512_set1_epi32(128);
  __mmask16 bad = 0;
  int64_t k = 0;
  for (; k + 64 <= n; k += 64) _mm512_storeu_si512(dst + k, unsigned_bytes64(src + k, inv_s, bad));
  for (; k + 16 <= n; k += 16) {
    const __m512i u = _mm512_add_epi32(quantize_epi32(_mm512_loadu_ps(src + k), inv_s, bad), offset);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm512_cvtepi32_epi8(u));
  }
  if (k < n) {
    const __mmask16 mask = tail_mask(n - k);
    const __m512i u = _mm512_add_epi32(quantize_epi32(_mm512_maskz_loadu_ps(mask, src + k), inv_s, bad), offset);
    _mm_mask_storeu_epi8(dst + k, mask, _mm512_cvtepi32_epi8(u));
  }
  return bad != 0;
}

// dst[0:n] = src[0:n] + 128 (int8 -> unsigned), by 64-byte masked chunks. True where src
// holds NaN's code (-128, unsigned 0).
inline bool flip_copy(uint8_t* dst, const int8_t* src, int64_t n) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __mmask64 bad = 0;
  for (int64_t k = 0; k < n; k += 64) {
    const int64_t left = n - k;
    const __mmask64 mask = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    const __m512i u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, src + k), flip);
    bad |= _mm512_mask_testn_epi8_mask(mask, u, u);
    _mm512_mask_storeu_epi8(dst + k, mask, u);
  }
  return bad != 0;
}

// Rows [0, M) of unsigned bytes, Kp apart, that hold NaN's code (unsigned 0): 1 in flags.
inline bool rows_with_nan_code(const uint8_t* au, int64_t M, int64_t Kp, uint8_t* flags) {
  bool any = false;
  for (int64_t i = 0; i < M; ++i) {
    __mmask64 bad = 0;
    for (int64_t k = 0; k < Kp; k += 64) {
      const int64_t left = Kp - k;
      const __mmask64 mask = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
      const __m512i u = _mm512_maskz_loadu_epi8(mask, au + i * Kp + k);
      bad |= _mm512_mask_testn_epi8_mask(mask, u, u);
    }
    flags[i] = bad != 0;
    any |= flags[i];
  }
  return any;
}

}  // namespace jaxlite
