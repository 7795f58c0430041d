// The int8 GEMM: acc[M,N] (int32) = A[M,K] (int8) x W[K,N] (int8), exactly as
// lax.dot_general(..., preferred_element_type=int32), followed by an epilogue applied while
// the accumulators are still in registers:
//
//   float out:  activation((float(acc) * row_scale[m]) * col_scale[n] + bias[n])
//   int8 out:   that value requantized: clamp(round_half_even(v * (1 / out_scale)), -127, 127)
//
// W is packed once at load (runtime/native_calls.py) in panels of 32 columns: with AVX-512
// VNNI as bytes, k in groups of 4 (the layout vpdpbusd reads); with AVX2 as bytes, k in
// pairs, which the tile widens to vpmaddwd's 16-bit pairs as it loads them. vpdpbusd
// multiplies unsigned by signed bytes, so A is shifted to A+128 (a bit flip) and 128 * colsum(W) is subtracted from
// the accumulator -- or (128 + zero[m]) * colsum(W) for rows quantized with a zero point
// (dynamic range rows: dialects/int8.py asymmetric_params), which makes acc = sum (a - zero)
// w; a W quantized with zero points per column too (attention's second activation) also
// subtracts w_zero[n] * sum (a - zero).
#pragma once

#include "vector_math.h"

namespace jaxlite {

struct Epilogue {
  const int32_t* colsum;
  const float* row_scale;  // nullptr: none
  const float* col_scale;
  const float* bias;       // nullptr: none
  int32_t activation;
  float out_inv_scale;     // > 0: requantize to int8 (1 / out_scale)
  void* out;
  int64_t ldo;
  const int32_t* row_zero = nullptr;  // per-row zero points of A's codes; nullptr: 0
  const int32_t* col_zero = nullptr;  // per-column zero points of W's codes (with row_sums)
  const int32_t* row_sums = nullptr;  // per row: sum over k of (A's code - row_zero)

  // The epilogue of the rows from m0 on, indexed from 0 (a block of rows on one thread).
  Epilogue from_row(int64_t m0) const {
    Epilogue e = *this;
    if (e.row_scale != nullptr) e.row_scale += m0;
    if (e.row_zero != nullptr) e.row_zero += m0;
    if (e.row_sums != nullptr) e.row_sums += m0;
    if (out_inv_scale > 0.0f) e.out = static_cast<int8_t*>(out) + m0 * ldo;
    else e.out = static_cast<float*>(out) + m0 * ldo;
    return e;
  }

  __attribute__((always_inline)) inline void operator()(int64_t m, int64_t n, __m512i acc, __mmask16 mask) const {
    const __m512i sums = _mm512_maskz_loadu_epi32(mask, colsum + n);
    acc = _mm512_sub_epi32(acc, row_zero == nullptr ? _mm512_slli_epi32(sums, 7)
                                                    : _mm512_mullo_epi32(sums, _mm512_set1_epi32(128 + row_zero[m])));
    if (col_zero != nullptr)
      acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(mask, col_zero + n),
                                                     _mm512_set1_epi32(row_sums[m])));
    __m512 v = _mm512_cvtepi32_ps(acc);
    if (row_scale != nullptr) v = _mm512_mul_ps(v, _mm512_set1_ps(row_scale[m]));
    v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mask, col_scale + n));
    if (bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias + n));
    if (activation != kNone) v = activate(v, activation);
    if (out_inv_scale > 0.0f) {
      _mm_mask_storeu_epi8(static_cast<int8_t*>(out) + m * ldo + n, mask,
                           _mm512_cvtepi32_epi8(quantize_epi32(v, _mm512_set1_ps(out_inv_scale))));
    } else {
      _mm512_mask_storeu_ps(static_cast<float*>(out) + m * ldo + n, mask, v);
    }
  }
};

// The packed weight's layout, as JaxliteWeightLayout reports it to the packer
// (runtime/native_calls.py), and the rows of A the tiles read: the unsigned bytes as they
// are (VNNI), or widened to 16 bits once per GEMM (AVX2), not once per panel.
#if defined(__AVX512VNNI__)
constexpr const char* kWeightLayout = "int8x4";
constexpr int64_t kCodeGroup = 4;  // consecutive k of a column
using TileRow = uint8_t;
inline const TileRow* kernel_rows(const uint8_t* au, int64_t, int64_t) { return au; }
#else
constexpr const char* kWeightLayout = "int8x2";
constexpr int64_t kCodeGroup = 2;
using TileRow = int16_t;
const TileRow* kernel_rows(const uint8_t* au, int64_t M, int64_t Kp);  // in scratch slot 2
#endif

// Column panels [p_begin, p_end) of the packed weight for every row of A (from kernel_rows).
void gemm_panels(const TileRow* rows, int64_t M, int64_t Kp, const int8_t* packed, int64_t N,
                 int64_t p_begin, int64_t p_end, const Epilogue& epi);

// int8 A -> A + 128 as unsigned bytes, K padded to Kp with 128 (i.e. zero), in scratch;
// nan_code is set where A holds NaN's code (-128).
uint8_t* unsigned_rows(const int8_t* A, int64_t M, int64_t K, int64_t Kp, bool& nan_code);

// float A -> per-row asymmetric int8 (dialects/int8.py asymmetric_params: scale and zero
// point per row into row_scale and row_zero, NaN scale for a row with NaN/Inf), stored as
// code + 128 with K padded to Kp, in scratch. Rows are lda floats apart (0: K, packed).
uint8_t* asymmetric_rows(const float* A, int64_t M, int64_t K, int64_t Kp, float* row_scale, int32_t* row_zero,
                         int64_t lda = 0);

// float A -> symmetric int8 with one calibrated scale for every row (an input quantize
// folded into the GEMM: q = round_half_even(a * (1 / scale)) clamped to +-127, -128 for
// NaN/Inf, the float operations of the XLA path), stored as q + 128 with K padded to Kp, in
// scratch. nonfinite is set where A holds a NaN or an Inf.
uint8_t* quantized_rows(const float* A, int64_t M, int64_t K, int64_t Kp, float scale, bool& nonfinite);

// The row scales of a GEMM whose unsigned rows au may hold NaN's code: row_scale itself
// (nullptr: none) where no row does, else a copy in storage (ones where row_scale is none)
// with NaN on the rows that do -- their results are NaN, the others' unchanged. Called
// only when the operand held a code at all, so models without NaN never scan the rows.
inline const float* nan_row_scales(const uint8_t* au, int64_t M, int64_t Kp, const float* row_scale,
                                   std::vector<float>& storage) {
  std::vector<uint8_t> flags(M);
  if (!rows_with_nan_code(au, M, Kp, flags.data())) return row_scale;
  storage.assign(M, 1.0f);
  if (row_scale != nullptr) std::copy(row_scale, row_scale + M, storage.begin());
  for (int64_t i = 0; i < M; ++i)
    if (flags[i]) storage[i] = std::numeric_limits<float>::quiet_NaN();
  return storage.data();
}

// Quantizes each of the N rows of float B [N, K] asymmetrically (scale and zero point as for
// asymmetric_rows; rows ldb floats apart) and packs the codes as the weight layout's
// columns (kWeightLayout), zero padded; colsum: each row's code sum.
void asymmetric_pack(const float* B, int64_t N, int64_t K, int64_t ldb, int64_t Kp, int8_t* packed,
                     int32_t* colsum, float* scale, int32_t* zero);

// sums[m] = sum over k < K of (code - row_zero[m]) for the unsigned rows au (code + 128, K
// padded to Kp with 128): the correction a zero point of the packed side needs.
void centred_row_sums(const uint8_t* au, int64_t M, int64_t K, int64_t Kp, const int32_t* row_zero,
                      int32_t* sums);

// Splits the GEMM over the intra-op thread pool when it is big enough to pay for it (a few
// chunks per thread, for balance): over panel pairs, and also over blocks of rows when
// there are too few pairs -- a convolution with 64 output channels (ResNet's first stage,
// 3136 rows) or 32 (the digits CNN) is one pair and would otherwise run on one thread.
template <typename Pool>
void gemm(const uint8_t* au, int64_t M, int64_t Kp, const int8_t* packed, int64_t N,
          const Epilogue& epi, Pool& pool) {
  constexpr int64_t kMinRows = 48;  // per row block: 8 tiles of 6
  const int64_t panels = (N + 31) / 32;
  const int64_t pairs = (panels + 1) / 2;
  const int64_t macs = M * Kp * N;
  // Row blocks only for big GEMMs (>= 32M MACs): below, splitting rows cost more than it gained
  // (measured: docs/ARCHITECTURE.md).
  const int64_t max_row_blocks = macs >= (int64_t{1} << 25) ? std::max<int64_t>(1, M / kMinRows) : 1;
  const int64_t threads = std::min<int64_t>({usable_threads(pool), pairs * max_row_blocks, macs / (1 << 20)});
  const TileRow* rows = kernel_rows(au, M, Kp);
  if (threads <= 1) {
    gemm_panels(rows, M, Kp, packed, N, 0, panels, epi);
    return;
  }
  parallel_grid(pool, threads, M, pairs, max_row_blocks, [=](int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
    gemm_panels(rows + m0 * Kp, m1 - m0, Kp, packed, N, std::min(panels, g0 * 2), std::min(panels, g1 * 2),
                epi.from_row(m0));
  });
}

inline const float* optional(ffi::Buffer<ffi::F32>& b) {
  return b.element_count() == 0 ? nullptr : b.typed_data();
}

// The calibrated scale of a float-input call: 0 where x_scale is empty (quantize on the
// fly), else its value; -1 when that is not > 0.
inline float fixed_scale(ffi::Buffer<ffi::F32>& x_scale) {
  if (x_scale.element_count() == 0) return 0.0f;
  const float s = x_scale.typed_data()[0];
  return s > 0.0f ? s : -1.0f;
}

// The float epilogue: float [M,N], or int8 when out_scale is given. row_scale (size M or
// 0), bias (N or 0) and out_scale (1 or 0) are optional; row_zero: the rows' zero points.
template <typename Pool>
ffi::Error EpilogueGemm(Pool& pool, const uint8_t* au, int64_t M, int64_t Kp, int64_t N,
                        ffi::Buffer<ffi::S8>& packed, ffi::Buffer<ffi::S32>& colsum, const float* row_scale,
                        ffi::Buffer<ffi::F32>& col_scale, ffi::Buffer<ffi::F32>& bias,
                        ffi::Buffer<ffi::F32>& out_scale, ffi::Result<ffi::AnyBuffer>& out, int32_t activation,
                        const int32_t* row_zero = nullptr) {
  if (activation < kNone || activation > kLast) return ffi::Error::InvalidArgument("unknown activation");
  const bool requantize = out_scale.element_count() != 0;
  if (requantize != (out->element_type() == ffi::DataType::S8))
    return ffi::Error::InvalidArgument("an int8 result needs out_scale, a float one must not have it");
  const float inv = requantize ? 1.0f / out_scale.typed_data()[0] : 0.0f;
  const Epilogue epi{colsum.typed_data(), row_scale, col_scale.typed_data(), optional(bias), activation, inv,
                     out->untyped_data(), N, row_zero};
  gemm(au, M, Kp, packed.typed_data(), N, epi, pool);
  return ffi::Error::Success();
}

}  // namespace jaxlite
