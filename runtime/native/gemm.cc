// The int8 GEMM (see gemm.h) and the three kernels that are one GEMM: int8 rows
// (QuantizedGemm), float rows quantized on the fly (DynamicGemm), and the product of two
// float activations (DynamicActGemm, attention).
#include "gemm.h"

#include "bindings.h"

namespace jaxlite {

namespace {

#if defined(__AVX512VNNI__)

// ROWS rows of A (unsigned, row stride lda) against PANELS consecutive 32-column panels;
// every accumulator stays in a register (ROWS * 2 * PANELS <= 24).
template <int ROWS, int PANELS>
inline void tile(const uint8_t* __restrict a, int64_t lda, const int8_t* __restrict panel,
                 int64_t k4, int64_t m0, int64_t n0, int64_t n_end, const Epilogue& epi) {
  constexpr int V = 2 * PANELS;
  const int64_t panel_bytes = k4 * 128;
  __m512i acc[ROWS][V];
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) acc[r][j] = _mm512_setzero_si512();
  for (int64_t kk = 0; kk < k4; ++kk) {
    __m512i b[V];
#pragma GCC unroll 4
    for (int p = 0; p < PANELS; ++p) {
      b[2 * p] = _mm512_loadu_si512(panel + p * panel_bytes + kk * 128);
      b[2 * p + 1] = _mm512_loadu_si512(panel + p * panel_bytes + kk * 128 + 64);
    }
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      int32_t av;
      std::memcpy(&av, a + r * lda + kk * 4, 4);
      const __m512i va = _mm512_set1_epi32(av);
#pragma GCC unroll 4
      for (int j = 0; j < V; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], va, b[j]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < V; ++j) {
    const int64_t n = n0 + 16 * j;
    const int64_t left = n_end - n;
    if (left <= 0) break;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) epi(m0 + r, n, acc[r][j], mask);
  }
}

template <int PANELS>
inline void tile_rows(int rows, const uint8_t* a, int64_t lda, const int8_t* panel, int64_t k4,
                      int64_t m0, int64_t n0, int64_t n_end, const Epilogue& epi) {
#define JAXLITE_TILE(R) \
  case R: tile<R, PANELS>(a, lda, panel, k4, m0, n0, n_end, epi); break;
  if constexpr (PANELS == 2) {
    switch (rows) { JAXLITE_TILE(6) JAXLITE_TILE(5) JAXLITE_TILE(4) JAXLITE_TILE(3) JAXLITE_TILE(2) JAXLITE_TILE(1) }
  } else {
    switch (rows) {
      JAXLITE_TILE(12) JAXLITE_TILE(11) JAXLITE_TILE(10) JAXLITE_TILE(9) JAXLITE_TILE(8) JAXLITE_TILE(7)
      JAXLITE_TILE(6) JAXLITE_TILE(5) JAXLITE_TILE(4) JAXLITE_TILE(3) JAXLITE_TILE(2) JAXLITE_TILE(1)
    }
  }
#undef JAXLITE_TILE
}

// Column panels [p_begin, p_end) for every row: pairs of panels in tiles of up to 6 rows,
// a last odd panel in tiles of up to 12 (the register budget of both is 24 accumulators).
// Rows are spread evenly over the tiles (128 rows: 18 x 6 + 4 x 5, not 21 x 6 + 2), so no
// tile runs nearly empty.
template <int PANELS>
void row_tiles(const uint8_t* au, int64_t M, int64_t Kp, const int8_t* panel, int64_t n0, int64_t n_end,
               const Epilogue& epi) {
  constexpr int64_t MAX_ROWS = PANELS == 2 ? 6 : 12;
  const int64_t tiles = (M + MAX_ROWS - 1) / MAX_ROWS;
  if (tiles == 0) return;
  const int64_t base = M / tiles, extra = M % tiles;
  for (int64_t t = 0, i = 0; t < tiles; ++t) {
    const int64_t rows = base + (t < extra ? 1 : 0);
    tile_rows<PANELS>(static_cast<int>(rows), au + i * Kp, Kp, panel, Kp / 4, i, n0, n_end, epi);
    i += rows;
  }
}

#else  // AVX2: no vpdpbusd

// ROWS rows of A (widened to 16 bits, kernel_rows) times the 16 columns of one half of a
// 32-column panel (bytes [32 h, 32 h + 32) of its 64-byte k-pair groups) into acc, 2 * ROWS
// accumulators in registers. The weight's 16-bit pairs come from vpmovsxbw loads; vpmaddwd
// multiplies a pair of A's values by a column's pair of weights and adds the two: exact
// (every product and pair sum fits), so the result equals the AVX-512 kernel's. Widening
// as it loads costs the 6-row tile nothing (the multiply-adds bound it) and halves the
// bytes a few-row GEMM streams, against a weight widened to int16 at load. Not inlined
// into the epilogue's code: with it GCC kept half the accumulators on the stack.
template <int ROWS>
__attribute__((noinline)) void half_products(const int16_t* __restrict a, int64_t lda,
                                             const int8_t* __restrict half, int64_t k2, __m256i* acc) {
  __m256i sum[ROWS][2];
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) sum[r][0] = sum[r][1] = _mm256_setzero_si256();
  for (int64_t kk = 0; kk < k2; ++kk) {
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(half + kk * 64)));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(half + kk * 64 + 16)));
#pragma GCC unroll 6
    for (int r = 0; r < ROWS; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * kk, 4);
      const __m256i va = _mm256_set1_epi32(pair);
      sum[r][0] = _mm256_add_epi32(sum[r][0], _mm256_madd_epi16(va, w0));
      sum[r][1] = _mm256_add_epi32(sum[r][1], _mm256_madd_epi16(va, w1));
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) {
    acc[2 * r] = sum[r][0];
    acc[2 * r + 1] = sum[r][1];
  }
}

// half_products, then the epilogue of each row.
template <int ROWS>
inline void half_tile(const int16_t* a, int64_t lda, const int8_t* half, int64_t k2, int64_t m0, int64_t n0,
                      int64_t n_end, const Epilogue& epi) {
  __m256i acc[2 * ROWS];
  half_products<ROWS>(a, lda, half, k2, acc);
  const __mmask16 mask = tail_mask(n_end - n0);
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) epi(m0 + r, n0, __m512i{acc[2 * r], acc[2 * r + 1]}, mask);
}

// One row of A (a batch-1 dense layer) times a whole 32-column panel, k unrolled by 2 into
// separate accumulators: one broadcast of A per 4 weight loads, where two half tiles of one
// row take one per 2, and no two consecutive multiply-adds wait on the same sum.
__attribute__((noinline)) void row_panel_products(const int16_t* __restrict a, const int8_t* __restrict panel,
                                                  int64_t k2, __m256i* acc) {
  __m256i sum[2][4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) sum[0][j] = sum[1][j] = _mm256_setzero_si256();
  const auto step = [&](int64_t kk, __m256i* s) __attribute__((always_inline)) {
    int32_t pair;
    std::memcpy(&pair, a + 2 * kk, 4);
    const __m256i va = _mm256_set1_epi32(pair);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(panel + kk * 64 + 16 * j)));
      s[j] = _mm256_add_epi32(s[j], _mm256_madd_epi16(va, w));
    }
  };
  for (int64_t kk = 0; kk < k2; kk += 2) {  // k2 = Kp / 2 is even
    step(kk, sum[0]);
    step(kk + 1, sum[1]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) acc[j] = _mm256_add_epi32(sum[0][j], sum[1][j]);
}

// One panel for every row: each half in tiles of up to 6 rows, spread evenly (a single row:
// the whole panel at once).
void panel_rows(const int16_t* rows, int64_t M, int64_t Kp, const int8_t* panel, int64_t n0, int64_t n_end,
                const Epilogue& epi) {
  if (M == 1) {
    __m256i acc[4];
    row_panel_products(rows, panel, Kp / 2, acc);
    for (int h = 0; h < 2 && n0 + 16 * h < n_end; ++h)
      epi(0, n0 + 16 * h, __m512i{acc[2 * h], acc[2 * h + 1]}, tail_mask(n_end - n0 - 16 * h));
    return;
  }
  constexpr int64_t MAX_ROWS = 6;
  const int64_t tiles = (M + MAX_ROWS - 1) / MAX_ROWS;
  if (tiles == 0) return;
  const int64_t base = M / tiles, extra = M % tiles, k2 = Kp / 2;
  for (int64_t t = 0, i = 0; t < tiles; ++t) {
    const int64_t count = base + (t < extra ? 1 : 0);
    for (int h = 0; h < 2 && n0 + 16 * h < n_end; ++h) {
      const int16_t* a = rows + i * Kp;
      const int8_t* half = panel + 32 * h;
      const int64_t n = n0 + 16 * h;
      switch (count) {
        case 6: half_tile<6>(a, Kp, half, k2, i, n, n_end, epi); break;
        case 5: half_tile<5>(a, Kp, half, k2, i, n, n_end, epi); break;
        case 4: half_tile<4>(a, Kp, half, k2, i, n, n_end, epi); break;
        case 3: half_tile<3>(a, Kp, half, k2, i, n, n_end, epi); break;
        case 2: half_tile<2>(a, Kp, half, k2, i, n, n_end, epi); break;
        default: half_tile<1>(a, Kp, half, k2, i, n, n_end, epi); break;
      }
    }
    i += count;
  }
}

#endif

}  // namespace

void gemm_panels(const TileRow* rows, int64_t M, int64_t Kp, const int8_t* packed, int64_t N,
                 int64_t p_begin, int64_t p_end, const Epilogue& epi) {
  int64_t p = p_begin;  // a panel is 32 * Kp weights
#if defined(__AVX512VNNI__)
  for (; p + 2 <= p_end; p += 2)
    row_tiles<2>(rows, M, Kp, packed + p * Kp * 32, p * 32, std::min<int64_t>(N, (p + 2) * 32), epi);
  if (p < p_end)
    row_tiles<1>(rows, M, Kp, packed + p * Kp * 32, p * 32, std::min<int64_t>(N, (p + 1) * 32), epi);
#else
  for (; p < p_end; ++p)
    panel_rows(rows, M, Kp, packed + p * Kp * 32, p * 32, std::min<int64_t>(N, (p + 1) * 32), epi);
#endif
}

#if !defined(__AVX512VNNI__)
const TileRow* kernel_rows(const uint8_t* au, int64_t M, int64_t Kp) {
  int16_t* rows = reinterpret_cast<int16_t*>(scratch(M * Kp * sizeof(int16_t), 2));
  const int64_t n = M * Kp;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(rows + i),
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(au + i))));
  for (; i < n; ++i) rows[i] = au[i];
  return rows;
}
#endif

uint8_t* unsigned_rows(const int8_t* A, int64_t M, int64_t K, int64_t Kp, bool& nan_code) {
  uint8_t* au = scratch(M * Kp);
  for (int64_t i = 0; i < M; ++i) {
    std::memset(au + i * Kp + K, 128, Kp - K);
    nan_code |= flip_copy(au + i * Kp, A + i * K, K);
  }
  return au;
}

uint8_t* asymmetric_rows(const float* A, int64_t M, int64_t K, int64_t Kp, float* row_scale, int32_t* row_zero,
                         int64_t lda) {
  uint8_t* au = scratch(M * Kp);
  for (int64_t i = 0; i < M; ++i) {
    const float* row = A + i * (lda ? lda : K);
    asymmetric_params(row, K, row_scale[i], row_zero[i]);
    std::memset(au + i * Kp + K, 128, Kp - K);
    asymmetric_copy(au + i * Kp, row, K, 1.0f / row_scale[i], row_zero[i]);
  }
  return au;
}

uint8_t* quantized_rows(const float* A, int64_t M, int64_t K, int64_t Kp, float scale, bool& nonfinite) {
  uint8_t* au = scratch(M * Kp);
  const __m512 inv_s = _mm512_set1_ps(1.0f / scale);
  for (int64_t i = 0; i < M; ++i) {
    std::memset(au + i * Kp + K, 128, Kp - K);
    nonfinite |= quantize_copy(au + i * Kp, A + i * K, K, inv_s);
  }
  return au;
}

void asymmetric_pack(const float* B, int64_t N, int64_t K, int64_t ldb, int64_t Kp, int8_t* packed,
                     int32_t* colsum, float* scale, int32_t* zero) {
  const int64_t panels = (N + 31) / 32;
  std::memset(packed, 0, panels * Kp * 32);
  alignas(64) int8_t q[16];
  for (int64_t n = 0; n < N; ++n) {
    const float* row = B + n * ldb;
    asymmetric_params(row, K, scale[n], zero[n]);
    const __m512 inv_s = _mm512_set1_ps(1.0f / scale[n]);
    const __m512i z = _mm512_set1_epi32(zero[n]);
    int8_t* col = packed + (n / 32) * Kp * 32 + (n % 32) * kCodeGroup;
    __m512i sum = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mask = tail_mask(K - k);
      const __m512i code = _mm512_max_epi32(_mm512_set1_epi32(-128), _mm512_min_epi32(
          _mm512_set1_epi32(127), asymmetric_epi32(_mm512_maskz_loadu_ps(mask, row + k), inv_s, z)));
      const __m512i qi = _mm512_maskz_mov_epi32(mask, code);
      sum = _mm512_add_epi32(sum, qi);
      _mm_store_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(qi));
      for (int64_t g = 0; g < 16 / kCodeGroup && k + kCodeGroup * g < K; ++g)  // a column's k group
        std::memcpy(col + (k / kCodeGroup + g) * 32 * kCodeGroup, q + kCodeGroup * g, kCodeGroup);
    }
    colsum[n] = _mm512_reduce_add_epi32(sum);
  }
}

void centred_row_sums(const uint8_t* au, int64_t M, int64_t K, int64_t Kp, const int32_t* row_zero,
                      int32_t* sums) {
  for (int64_t i = 0; i < M; ++i) {
    __m512i total = _mm512_setzero_si512();  // byte sums in 64-bit lanes
    for (int64_t k = 0; k < Kp; k += 64) {
      const __mmask64 mask = Kp - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (Kp - k)) - 1;
      total = _mm512_add_epi64(total, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(mask, au + i * Kp + k),
                                                      _mm512_setzero_si512()));
    }
    const int64_t unsigned_sum = _mm512_reduce_add_epi64(total) - 128 * (Kp - K);  // less the padding
    sums[i] = static_cast<int32_t>(unsigned_sum - K * (128 + int64_t{row_zero[i]}));
  }
}

// int8 rows a [M, K] times the packed weight; row_scale (M or 0 values), bias (N or 0) and
// out_scale (1: an int8 result, or 0) are optional. A row holding NaN's code gives NaN
// (float result) or NaN's code (int8 result) -- except with row_zero (M zero points: rows
// quantized asymmetrically, QuantizeRows), where every code is a value and a NaN row has a
// NaN scale.
template <typename Pool>
ffi::Error QuantizedGemm(Pool pool, ffi::Buffer<ffi::S8> a, ffi::Buffer<ffi::S8> packed, ffi::Buffer<ffi::S32> colsum,
                         ffi::Buffer<ffi::F32> row_scale, ffi::Buffer<ffi::S32> row_zero,
                         ffi::Buffer<ffi::F32> col_scale, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> out_scale,
                         ffi::Result<ffi::AnyBuffer> out, ActivationAttr activation) {
  const int64_t M = a.dimensions()[0], K = a.dimensions()[1], N = out->dimensions()[1];
  const int64_t Kp = (K + 3) / 4 * 4;
  const bool zeros = row_zero.element_count() != 0;
  if (zeros && (static_cast<int64_t>(row_zero.element_count()) != M ||
                static_cast<int64_t>(row_scale.element_count()) != M))
    return ffi::Error::InvalidArgument("jaxlite_quantized_gemm: row_zero needs M zero points and M row scales");
  bool nan_code = false;
  const uint8_t* au = unsigned_rows(a.typed_data(), M, K, Kp, nan_code);
  std::vector<float> storage;
  const float* rows = nan_code && !zeros ? nan_row_scales(au, M, Kp, optional(row_scale), storage)
                                         : optional(row_scale);
  return EpilogueGemm(pool, au, M, Kp, N, packed, colsum, rows, col_scale, bias, out_scale, out, *activation,
                      zeros ? row_zero.typed_data() : nullptr);
}

// Dynamic range: float A quantized per row on the fly (asymmetric: a scale and a zero point
// per row), then the float epilogue with the row scales (out = ((acc * row_scale) * w_scale
// + bias) -> activation, acc = sum (q - zero) w); a row with NaN or Inf has a NaN scale, so
// its result is NaN. With x_scale (a calibrated scale) every row is quantized with it
// instead (symmetric), and the epilogue has no row scale.
template <typename Pool>
ffi::Error DynamicGemm(Pool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::S8> packed, ffi::Buffer<ffi::S32> colsum,
                       ffi::Buffer<ffi::F32> w_scale, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> out_scale,
                       ffi::Buffer<ffi::F32> x_scale, ffi::Result<ffi::AnyBuffer> out, ActivationAttr activation) {
  const int64_t M = a.dimensions()[0], K = a.dimensions()[1], N = out->dimensions()[1];
  const int64_t Kp = (K + 3) / 4 * 4;
  const float fixed = fixed_scale(x_scale);
  if (fixed < 0.0f) return ffi::Error::InvalidArgument("x_scale must be > 0");
  if (fixed == 0.0f) {  // per-row scales are NaN for rows with NaN/Inf
    std::vector<float> row_scale(M);
    std::vector<int32_t> row_zero(M);
    const uint8_t* au = asymmetric_rows(a.typed_data(), M, K, Kp, row_scale.data(), row_zero.data());
    return EpilogueGemm(pool, au, M, Kp, N, packed, colsum, row_scale.data(), w_scale, bias, out_scale, out,
                        *activation, row_zero.data());
  }
  std::vector<float> storage;
  bool nonfinite = false;
  const uint8_t* au = quantized_rows(a.typed_data(), M, K, Kp, fixed, nonfinite);
  // a fixed scale needs the NaN codes found
  const float* rows = nonfinite ? nan_row_scales(au, M, Kp, nullptr, storage) : nullptr;
  return EpilogueGemm(pool, au, M, Kp, N, packed, colsum, rows, w_scale, bias, out_scale, out, *activation);
}

// A batch of products of two float activations, A [B, M, K] x B [B, N, K]^T -> [B, M, N]:
// A's rows and B's rows both quantized on the fly, asymmetrically (a scale and a zero point
// per row, as the dynamic GEMM's A: attention's probabilities, on either side, are all >= 0),
// B packed per batch -- out = (acc * a_scale[m]) * b_scale[n], acc = sum (a - a_zero[m])
// (b - b_zero[n]). The operands are read in place through strides
// (batch, row; K contiguous), so attention's heads need no transposes: q and k come
// straight from their [seq, heads, head_dim] projections. Batches are spread over the
// thread pool.
template <typename Pool>
ffi::Error DynamicActGemm(Pool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> out,
                          IntsAttr<kSizes> sizes_attr, IntsAttr<kStrides> strides_attr) {
  ActProduct shape;
  if (!shape.read(*sizes_attr, *strides_attr, a.element_count(), b.element_count(), out->element_count()))
    return ffi::Error::InvalidArgument(
        "jaxlite_dynamic_act_gemm: sizes [B, M, N, K] and strides [4] that fit the operands");
  const int64_t batches = shape.batches, M = shape.M, N = shape.N, K = shape.K;
  const int64_t a_batch = shape.a_batch, a_row = shape.a_row, b_batch = shape.b_batch, b_row = shape.b_row;
  const int64_t Kp = (K + 3) / 4 * 4, panels = (N + 31) / 32;
  const float* A = a.typed_data();
  const float* Bm = b.typed_data();
  float* C = out->typed_data();
  auto one = [=](int64_t i) {
    std::vector<float> row_scale(M), col_scale(N);  // rows and columns with NaN/Inf have NaN scales
    std::vector<int32_t> row_zero(M), row_sums(M), col_zero(N), colsum(N);
    const uint8_t* au = asymmetric_rows(A + i * a_batch, M, K, Kp, row_scale.data(), row_zero.data(), a_row);
    centred_row_sums(au, M, K, Kp, row_zero.data(), row_sums.data());
    int8_t* packed = reinterpret_cast<int8_t*>(scratch(panels * Kp * 32, 1));
    asymmetric_pack(Bm + i * b_batch, N, K, b_row, Kp, packed, colsum.data(), col_scale.data(), col_zero.data());
    Epilogue epi{colsum.data(), row_scale.data(), col_scale.data(), nullptr, kNone, 0.0f, C + i * M * N, N,
                 row_zero.data()};
    epi.col_zero = col_zero.data();
    epi.row_sums = row_sums.data();
    gemm_panels(kernel_rows(au, M, Kp), M, Kp, packed, N, 0, panels, epi);
  };
  const int64_t threads = std::min<int64_t>({usable_threads(pool), batches, batches * M * Kp * N / (1 << 19)});
  parallel_for(pool, threads, batches, one);
  return ffi::Error::Success();
}

// ---- float32 GEMM on a packed weight (dense layers) ----

// Rows x Panels accumulators (16 columns each) stay in registers over all of K: rows of A
// (lda floats apart) against consecutive 16-column panels of the weight packed as
// [ceil(N / 16)][K][16] (zero-padded columns), then the bias and the activation on the way
// out to rows ldo floats apart.
template <int Rows, int Panels>
inline void float_tile(const float* __restrict a, int64_t lda, int64_t K, const float* __restrict panels,
                       int64_t first_col, int64_t N, const float* bias, int32_t activation, float* out,
                       int64_t ldo) {
  __m512 acc[Rows][Panels];
  for (int r = 0; r < Rows; ++r)
    for (int j = 0; j < Panels; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 w[Panels];
    for (int j = 0; j < Panels; ++j) w[j] = _mm512_loadu_ps(panels + (j * K + k) * 16);
    for (int r = 0; r < Rows; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + k]);
      for (int j = 0; j < Panels; ++j) acc[r][j] = _mm512_fmadd_ps(x, w[j], acc[r][j]);
    }
  }
  for (int j = 0; j < Panels; ++j) {
    const int64_t col = first_col + 16 * j;
    if (col >= N) break;
    const __mmask16 mask = N - col >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (N - col)) - 1);
    const __m512 b = bias != nullptr ? _mm512_maskz_loadu_ps(mask, bias + col) : _mm512_setzero_ps();
    for (int r = 0; r < Rows; ++r)
      _mm512_mask_storeu_ps(out + r * ldo + col, mask, activate(_mm512_add_ps(acc[r][j], b), activation));
  }
}

// Rows x panels [p_begin, p_end), Group panels per tile, then single panels.
template <int Rows, int Group>
void row_panels(const float* a, int64_t lda, int64_t K, const float* packed, int64_t p_begin, int64_t p_end,
                int64_t N, const float* bias, int32_t activation, float* out) {
  int64_t p = p_begin;
  for (; p + Group <= p_end; p += Group)
    float_tile<Rows, Group>(a, lda, K, packed + p * K * 16, p * 16, N, bias, activation, out, N);
  for (; p < p_end; ++p) float_tile<Rows, 1>(a, lda, K, packed + p * K * 16, p * 16, N, bias, activation, out, N);
}

// A few rows (a batch-1 dense layer) against every panel, four at a time: bound by reading
// the weight once, so no blocking.
template <int Rows>
void few_rows(const float* a, int64_t K, const float* packed, int64_t N, const float* bias, int32_t activation,
              float* out) {
  row_panels<Rows, 4>(a, K, K, packed, 0, (N + 15) / 16, N, bias, activation, out);
}

// The many-rows tile: 6 rows x 4 panels (24 zmm accumulators) with AVX-512, 6 rows x 1
// panel with AVX2 (12 ymm accumulators through avx512_on_avx2.h): BLIS's 6 x 16 kernel.
constexpr int kTileRows = 6;
#if defined(__AVX512F__)
constexpr int kTilePanels = 4;
#else
constexpr int kTilePanels = 1;
#endif
// The weight columns one pass of row tiles reads, kept in L2 while every tile passes over
// them (A's tile, 6 x K, stays in L1 across the block's panels).
constexpr int64_t kPanelBlockBytes = 128 * 1024;

// Rows [0, M) of A (rows lda floats apart, K used) x panels [p_begin, p_end) into out
// [M, N]: blocks of panels, and for each, tiles of up to 6 rows spread evenly (128 rows:
// 18 x 6 + 4 x 5).
void float_gemm(const float* a, int64_t lda, int64_t M, int64_t K, const float* packed, int64_t N, int64_t p_begin,
                int64_t p_end, const float* bias, int32_t activation, float* out) {
  const int64_t block = std::max<int64_t>(kTilePanels, kPanelBlockBytes / (K * 64) / kTilePanels * kTilePanels);
  const int64_t tiles = (M + kTileRows - 1) / kTileRows;
  const int64_t base = M / tiles, extra = M % tiles;
  for (int64_t pb = p_begin; pb < p_end; pb += block) {
    const int64_t pe = std::min(p_end, pb + block);
    for (int64_t t = 0, i = 0; t < tiles; ++t) {
      const int64_t rows = base + (t < extra ? 1 : 0);
      const float* at = a + i * lda;
      float* ot = out + i * N;
      switch (rows) {
        case 6: row_panels<6, kTilePanels>(at, lda, K, packed, pb, pe, N, bias, activation, ot); break;
        case 5: row_panels<5, kTilePanels>(at, lda, K, packed, pb, pe, N, bias, activation, ot); break;
        case 4: row_panels<4, kTilePanels>(at, lda, K, packed, pb, pe, N, bias, activation, ot); break;
        case 3: row_panels<3, kTilePanels>(at, lda, K, packed, pb, pe, N, bias, activation, ot); break;
        case 2: row_panels<2, kTilePanels>(at, lda, K, packed, pb, pe, N, bias, activation, ot); break;
        default: row_panels<1, kTilePanels>(at, lda, K, packed, pb, pe, N, bias, activation, ot); break;
      }
      i += rows;
    }
  }
}

// float32 a [M, K] times a weight packed as [ceil(N / 16)][K][16] (zero-padded columns),
// + bias (N or 0 values), activation: out [M, N]. Up to four rows read the weight once on one
// thread; more rows run blocked, split over the pool by column blocks (and row blocks when
// there are too few column blocks) once the product is worth it.
template <typename Pool>
ffi::Error FloatGemm(Pool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> packed, ffi::Buffer<ffi::F32> bias,
                     ffi::ResultBuffer<ffi::F32> out, ActivationAttr activation) {
  const auto ad = a.dimensions(), od = out->dimensions();
  if (ad.size() != 2 || od.size() != 2 || ad[0] != od[0] || ad[0] < 1)
    return ffi::Error::InvalidArgument("jaxlite FloatGemm takes [M, K] and gives [M, N]");
  const int64_t M = ad[0], K = ad[1], N = od[1];
  if (K < 1 || N < 1 || static_cast<int64_t>(packed.element_count()) != (N + 15) / 16 * 16 * K)
    return ffi::Error::InvalidArgument("jaxlite FloatGemm: the packed weight is not [ceil(N / 16)][K][16]");
  const int64_t nb = static_cast<int64_t>(bias.element_count());
  if (nb != 0 && nb != N) return ffi::Error::InvalidArgument("jaxlite FloatGemm: the bias has N values or none");
  if (*activation < 0 || *activation > kLast) return ffi::Error::InvalidArgument("unknown activation");
  const float* b = nb != 0 ? bias.typed_data() : nullptr;
  const float *x = a.typed_data(), *w = packed.typed_data();
  float* y = out->typed_data();
  const int32_t act = *activation;
  switch (M) {
    case 1: few_rows<1>(x, K, w, N, b, act, y); return ffi::Error::Success();
    case 2: few_rows<2>(x, K, w, N, b, act, y); return ffi::Error::Success();
    case 3: few_rows<3>(x, K, w, N, b, act, y); return ffi::Error::Success();
    case 4: few_rows<4>(x, K, w, N, b, act, y); return ffi::Error::Success();
    default: break;
  }
  constexpr int64_t kMinRows = 24;  // per row block: 4 tiles of 6
  const int64_t panels = (N + 15) / 16;
  const int64_t groups = (panels + kTilePanels - 1) / kTilePanels;
  const int64_t threads = std::min<int64_t>(usable_threads(pool), M * K * N >> 20);
  if (threads <= 1) {
    float_gemm(x, K, M, K, w, N, 0, panels, b, act, y);
    return ffi::Error::Success();
  }
  parallel_grid(pool, threads, M, groups, std::max<int64_t>(1, M / kMinRows),
                [=](int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
                  const int64_t p0 = std::min(panels, g0 * kTilePanels), p1 = std::min(panels, g1 * kTilePanels);
                  if (m1 > m0 && p1 > p0) float_gemm(x + m0 * K, K, m1 - m0, K, w, N, p0, p1, b, act, y + m0 * N);
                });
  return ffi::Error::Success();
}

// A batch of float32 products of two activations, A [B, M, K] x B [B, N, K]^T -> [B, M, N]
// (attention's scores and weighted sum), read in place through strides as DynamicActGemm
// reads them: each batch's B rows are packed into FloatGemm's panels, then FloatGemm's
// tiles run over A's rows. Batches are spread over the thread pool.
template <typename Pool>
ffi::Error FloatActGemm(Pool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> out,
                        IntsAttr<kSizes> sizes_attr, IntsAttr<kStrides> strides_attr) {
  ActProduct s;
  if (!s.read(*sizes_attr, *strides_attr, a.element_count(), b.element_count(), out->element_count()))
    return ffi::Error::InvalidArgument("jaxlite FloatActGemm: sizes [B, M, N, K] and strides [4] that fit the operands");
  const int64_t panels = (s.N + 15) / 16;
  const float* A = a.typed_data();
  const float* Bm = b.typed_data();
  float* C = out->typed_data();
  auto one = [=](int64_t i) {
    float* packed = reinterpret_cast<float*>(scratch(panels * s.K * 16 * sizeof(float), 1));
    const float* rows = Bm + i * s.b_batch;
    for (int64_t p = 0; p < panels; ++p) {
      float* panel = packed + p * s.K * 16;
      const int64_t width = std::min<int64_t>(16, s.N - 16 * p);
      for (int64_t k = 0; k < s.K; ++k) {
        for (int64_t c = 0; c < width; ++c) panel[k * 16 + c] = rows[(16 * p + c) * s.b_row + k];
        for (int64_t c = width; c < 16; ++c) panel[k * 16 + c] = 0.0f;
      }
    }
    float_gemm(A + i * s.a_batch, s.a_row, s.M, s.K, packed, s.N, 0, panels, nullptr, kNone, C + i * s.M * s.N);
  };
  const int64_t threads = std::min<int64_t>({usable_threads(pool), s.batches, s.batches * s.M * s.K * s.N >> 19});
  parallel_for(pool, threads, s.batches, one);
  return ffi::Error::Success();
}

}  // namespace jaxlite

// The packed int8 weight's layout this build reads (gemm.h), for runtime/native_calls.py.
extern "C" __attribute__((visibility("default"))) const char* JaxliteWeightLayout() {
  return jaxlite::kWeightLayout;
}

JAXLITE_EXPORT(QuantizedGemm)
JAXLITE_EXPORT(DynamicGemm)
JAXLITE_EXPORT(DynamicActGemm)
JAXLITE_EXPORT(FloatGemm)
JAXLITE_EXPORT(FloatActGemm)
