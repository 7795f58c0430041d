// jaxlite's int8 GEMM for CPUs with AVX-512 VNNI, called from XLA through the jax FFI.
//
// C[M,N] (int32) = A[M,K] (int8) x W[K,N] (int8), exactly as
// lax.dot_general(..., preferred_element_type=int32). W is packed once at load (see
// runtime/native.py): panels of 32 columns, k in groups of 4, the layout vpdpbusd reads.
// vpdpbusd multiplies unsigned by signed bytes, so A is shifted to A+128 on the fly and
// 128 * colsum(W) is subtracted from the result. XLA's own int8 dot_general reaches about
// 40% of VNNI peak on the machine this was measured on; this kernel ~2x that on
// transformer-sized GEMMs.
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Packed W layout: [N/32 panels][K4 = ceil(K/4)][32 cols][4 k] int8, plus colsum[N] (int32)
// so that (a+128)*w - 128*colsum(w) = a*w (A is converted to unsigned on the fly).
template <int ROWS>
static inline void kernel(const uint8_t* __restrict a, int64_t lda, const int8_t* __restrict panel,
                          int64_t k4, int32_t* __restrict c) {
  __m512i acc0[ROWS], acc1[ROWS];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) { acc0[r] = _mm512_setzero_si512(); acc1[r] = _mm512_setzero_si512(); }
  for (int64_t kk = 0; kk < k4; ++kk) {
    const __m512i b0 = _mm512_loadu_si512(panel + kk * 128);
    const __m512i b1 = _mm512_loadu_si512(panel + kk * 128 + 64);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      int32_t av;
      std::memcpy(&av, a + r * lda + kk * 4, 4);
      const __m512i va = _mm512_set1_epi32(av);
      acc0[r] = _mm512_dpbusd_epi32(acc0[r], va, b0);
      acc1[r] = _mm512_dpbusd_epi32(acc1[r], va, b1);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
    _mm512_storeu_si512(c + r * 32, acc0[r]);
    _mm512_storeu_si512(c + r * 32 + 16, acc1[r]);
  }
}

static void run_rows(int rows, const uint8_t* a, int64_t lda, const int8_t* panel, int64_t k4, int32_t* c) {
  switch (rows) {
    case 8: kernel<8>(a, lda, panel, k4, c); break;
    case 7: kernel<7>(a, lda, panel, k4, c); break;
    case 6: kernel<6>(a, lda, panel, k4, c); break;
    case 5: kernel<5>(a, lda, panel, k4, c); break;
    case 4: kernel<4>(a, lda, panel, k4, c); break;
    case 3: kernel<3>(a, lda, panel, k4, c); break;
    case 2: kernel<2>(a, lda, panel, k4, c); break;
    default: kernel<1>(a, lda, panel, k4, c); break;
  }
}

// The shared GEMM loop: 8-row tiles of A (already unsigned, K padded to Kp) against each
// 32-column panel; ``store(row, col, acc)`` receives the exact int32 product.
template <typename Store>
static void gemm_tiles(const std::vector<uint8_t>& au, int64_t M, int64_t Kp, const int8_t* P,
                       const int32_t* colsum, int64_t N, Store store) {
  const int64_t K4 = Kp / 4;
  const int64_t panels = (N + 31) / 32;
  alignas(64) int32_t tile[8 * 32];
  for (int64_t p = 0; p < panels; ++p) {
    const int cols = static_cast<int>(std::min<int64_t>(32, N - p * 32));
    const int8_t* panel = P + p * K4 * 128;
    for (int64_t i = 0; i < M; i += 8) {
      const int rows = static_cast<int>(std::min<int64_t>(8, M - i));
      run_rows(rows, au.data() + i * Kp, Kp, panel, K4, tile);
      for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j) {
          const int64_t n = p * 32 + j;
          store(i + r, n, tile[r * 32 + j] - 128 * colsum[n]);
        }
    }
  }
}

static ffi::Error Int8GemmImpl(ffi::Buffer<ffi::S8> a, ffi::Buffer<ffi::S8> packed,
                               ffi::Buffer<ffi::S32> colsum, ffi::ResultBuffer<ffi::S32> out) {
  const int64_t M = a.dimensions()[0], K = a.dimensions()[1], N = out->dimensions()[1];
  const int64_t Kp = (K + 3) / 4 * 4;
  const int8_t* A = a.typed_data();
  // A -> unsigned (x + 128), K padded to a multiple of 4 with 128 (i.e. zero)
  std::vector<uint8_t> au(M * Kp, 128);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) au[i * Kp + k] = static_cast<uint8_t>(A[i * K + k] + 128);
  int32_t* C = out->typed_data();
  gemm_tiles(au, M, Kp, packed.typed_data(), colsum.typed_data(), N,
             [&](int64_t m, int64_t n, int32_t acc) { C[m * N + n] = acc; });
  return ffi::Error::Success();
}

// Dynamic-range variant: float A is quantized per row (scale = max|row| / 127, q =
// round-half-even(a / scale)), multiplied by the packed int8 W, and rescaled:
// out = float(acc) * row_scale * w_scale[n] -- the float operations of the XLA path in
// runtime/quant_kernels.py, in the same order (XLA may still fuse its rescale into a
// multiply-add, so the two agree to float rounding).
static ffi::Error DynamicGemmImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::S8> packed,
                                  ffi::Buffer<ffi::S32> colsum, ffi::Buffer<ffi::F32> wscale,
                                  ffi::ResultBuffer<ffi::F32> out) {
  const int64_t M = a.dimensions()[0], K = a.dimensions()[1], N = out->dimensions()[1];
  const int64_t Kp = (K + 3) / 4 * 4;
  const float* A = a.typed_data();
  std::vector<uint8_t> au(M * Kp, 128);
  std::vector<float> row_scale(M);
  for (int64_t i = 0; i < M; ++i) {
    float m = 0.0f;
    for (int64_t k = 0; k < K; ++k) m = std::max(m, std::fabs(A[i * K + k]));
    const float s = m > 0.0f ? m / 127.0f : 1.0f;
    row_scale[i] = s;
    for (int64_t k = 0; k < K; ++k) {
      const float q = std::min(127.0f, std::max(-127.0f, std::nearbyint(A[i * K + k] / s)));
      au[i * Kp + k] = static_cast<uint8_t>(static_cast<int32_t>(q) + 128);
    }
  }
  const float* ws = wscale.typed_data();
  float* C = out->typed_data();
  gemm_tiles(au, M, Kp, packed.typed_data(), colsum.typed_data(), N,
             [&](int64_t m, int64_t n, int32_t acc) {
               C[m * N + n] = (static_cast<float>(acc) * row_scale[m]) * ws[n];
             });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteDynamicGemm, DynamicGemmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteInt8Gemm, Int8GemmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
