// jaxlite's int8 GEMM for CPUs with AVX-512 VNNI, called from XLA through the jax FFI.
//
// acc[M,N] (int32) = A[M,K] (int8) x W[K,N] (int8), exactly as
// lax.dot_general(..., preferred_element_type=int32), followed by an epilogue applied while
// the accumulators are still in registers:
//
//   float out:  activation((float(acc) * row_scale[m]) * col_scale[n] + bias[n])
//   int8 out:   that value requantized: clamp(round_half_even(v * (1 / out_scale)), -127, 127)
//
// (row_scale, bias, out_scale optional). The float-input variants quantize A as they read
// it: per row (dots) or per sample (convolutions), scale = max|.| / 127, or with a given
// calibrated scale (an int8 model's input quantize folded in). Convolutions gather their
// patches in the kernel; max pooling runs here too, so that quantized graphs stay within
// custom calls (which XLA runs inline). W is packed once at load (see
// runtime/native.py): panels of 32 columns, k in groups of 4, the layout vpdpbusd reads.
// vpdpbusd multiplies unsigned by signed bytes, so A is shifted to A+128 (a bit flip) and
// 128 * colsum(W) is subtracted from the accumulator. Work is split over column panels
// on XLA's intra-op thread pool when it has more than one thread. Also here: the product
// of two activations (attention; operands read through strides), per-row quantization on
// its own (rows several GEMMs read), and the float32 row ops LayerNorm and softmax.
#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <sched.h>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Activation : int32_t {
  kNone = 0, kRelu = 1, kRelu6 = 2, kSigmoid = 3, kTanh = 4, kSilu = 5, kGeluTanh = 6, kGeluErf = 7, kLast = kGeluErf
};

// exp(x) to ~1 ulp (Cephes' expf: x = n ln2 + r, a degree-7 polynomial in r, times 2^n).
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.3762626647949f)), _mm512_set1_ps(88.3762626647949f));
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
  const __m512 x = _mm512_min_ps(_mm512_max_ps(x_in, _mm512_set1_ps(-7.90531110763549805f)),
                                 _mm512_set1_ps(7.90531110763549805f));
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
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-4.0f)), _mm512_set1_ps(4.0f));
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
inline __m512 activate(__m512 v, int32_t activation) {
  const __m512 zero = _mm512_setzero_ps(), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  switch (activation) {
    case kRelu: return _mm512_max_ps(v, zero);
    case kRelu6: return _mm512_min_ps(_mm512_max_ps(v, zero), _mm512_set1_ps(6.0f));
    case kSigmoid: return sigmoid_ps(v);
    case kTanh: return tanh_ps(v);
    case kSilu: return _mm512_mul_ps(v, sigmoid_ps(v));
    case kGeluTanh: {
      // x * 0.5 * (1 + tanh(z)), z = sqrt(2/pi) * (x + 0.044715 x^3), computed as the equal
      // x / (1 + exp(-2z)): ~20 vector ops where the tanh form takes ~30 and a division (the
      // epilogue of a transformer's first MLP GEMM was a third of its time). rcp14 and one
      // Newton step give the reciprocal to ~1 ulp; where exp(-2z) overflows the result is 0.
      const __m512 two_z = _mm512_mul_ps(v, _mm512_fmadd_ps(_mm512_mul_ps(v, v), _mm512_set1_ps(0.0713548162726f),
                                                           _mm512_set1_ps(1.5957691216057308f)));
      const __m512 d = _mm512_add_ps(one, exp_ps(_mm512_sub_ps(zero, two_z)));
      __m512 r = _mm512_rcp14_ps(d);
      r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
      return _mm512_mul_ps(v, r);
    }
    case kGeluErf:  // x * (erf(x / sqrt(2)) + 1) / 2
      return _mm512_div_ps(
          _mm512_mul_ps(v, _mm512_add_ps(erf_ps(_mm512_div_ps(v, _mm512_set1_ps(1.4142135623730951f))), one)),
          _mm512_set1_ps(2.0f));
    default: return v;
  }
}

// round_half_even(x * inv_s) clamped to +-127 as int32, inv_s = 1 / s: the XLA path's
// quantize (runtime/int8.py: a multiply, since a zmm division costs ~10x as much). Clamping
// before rounding is the same (+-127 are integers), and cvtps_epi32 rounds half to even.
inline __m512i quantize_epi32(__m512 x, __m512 inv_s) {
  const __m512 q = _mm512_mul_ps(x, inv_s);
  return _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f)));
}

struct Epilogue {
  const int32_t* colsum;
  const float* row_scale;  // nullptr: none
  const float* col_scale;
  const float* bias;       // nullptr: none
  int32_t activation;
  float out_inv_scale;     // > 0: requantize to int8 (1 / out_scale)
  void* out;
  int64_t ldo;

  // The epilogue of the rows from m0 on, indexed from 0 (a block of rows on one thread).
  Epilogue from_row(int64_t m0) const {
    Epilogue e = *this;
    if (e.row_scale != nullptr) e.row_scale += m0;
    if (out_inv_scale > 0.0f) e.out = static_cast<int8_t*>(out) + m0 * ldo;
    else e.out = static_cast<float*>(out) + m0 * ldo;
    return e;
  }

  inline void operator()(int64_t m, int64_t n, __m512i acc, __mmask16 mask) const {
    acc = _mm512_sub_epi32(acc, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, colsum + n), 7));
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

void gemm_panels(const uint8_t* au, int64_t M, int64_t Kp, const int8_t* packed, int64_t N,
                 int64_t p_begin, int64_t p_end, const Epilogue& epi) {
  const int64_t k4 = Kp / 4;
  int64_t p = p_begin;
  for (; p + 2 <= p_end; p += 2)
    row_tiles<2>(au, M, Kp, packed + p * k4 * 128, p * 32, std::min<int64_t>(N, (p + 2) * 32), epi);
  if (p < p_end)
    row_tiles<1>(au, M, Kp, packed + p * k4 * 128, p * 32, std::min<int64_t>(N, (p + 1) * 32), epi);
}

// Threads worth using: the pool's, but no more than the CPUs this process may run on (a
// process pinned to one core must not split work it can only time-slice).
template <typename Pool>
int64_t usable_threads(Pool& pool) {
  static const int64_t cpus = [] {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
  }();
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), cpus));
}

// Waits for the other threads' chunks: spins briefly, then yields the core.
void wait_until(const std::atomic<int64_t>& done, int64_t target) {
  for (int spins = 0; done.load(std::memory_order_acquire) < target; ++spins) {
    if (spins < 4096) _mm_pause();
    else std::this_thread::yield();
  }
}

// Runs fn(0), ..., fn(count - 1) on `threads` threads: the caller and pool tasks claim
// items from a shared counter, so the call finishes even when every pool thread is busy
// elsewhere; tasks that start late find no item left and touch nothing but the counters
// (kept alive by the shared_ptr).
template <typename Pool, typename F>
void parallel_for(Pool& pool, int64_t threads, int64_t count, F fn) {
  if (threads <= 1) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  struct Progress { std::atomic<int64_t> next{0}, done{0}; };
  auto progress = std::make_shared<Progress>();
  auto work = [progress, count, fn] {
    for (int64_t i; (i = progress->next.fetch_add(1, std::memory_order_relaxed)) < count;) {
      fn(i);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule(decltype(work)(work));
  work();
  wait_until(progress->done, count);
}

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
  // Row blocks only for big GEMMs (>= 32M MACs, ~170 us on one core): on the digits CNN's second
  // convolution (4.7M) splitting rows made the model 30% slower on two cores, on ResNet's
  // first stage (116M) 10% faster.
  const int64_t max_row_blocks = macs >= (int64_t{1} << 25) ? std::max<int64_t>(1, M / kMinRows) : 1;
  const int64_t threads = std::min<int64_t>({usable_threads(pool), pairs * max_row_blocks, macs / (1 << 20)});
  if (threads <= 1) {
    gemm_panels(au, M, Kp, packed, N, 0, panels, epi);
    return;
  }
  const int64_t col_chunks = std::min<int64_t>(pairs, 4 * threads);
  const int64_t row_chunks = std::min<int64_t>(max_row_blocks, (4 * threads + col_chunks - 1) / col_chunks);
  parallel_for(pool, threads, col_chunks * row_chunks, [=](int64_t c) {
    const int64_t rc = c / col_chunks, cc = c % col_chunks;
    const int64_t b = std::min(panels, pairs * cc / col_chunks * 2);
    const int64_t e = std::min(panels, pairs * (cc + 1) / col_chunks * 2);
    const int64_t m0 = M * rc / row_chunks, m1 = M * (rc + 1) / row_chunks;
    gemm_panels(au + m0 * Kp, m1 - m0, Kp, packed, N, b, e, epi.from_row(m0));
  });
}

// Scratch buffers per thread (slot 0: the GEMM's A rows, slot 1: a padded conv input),
// reused across calls: no page faults on every call.
uint8_t* scratch(size_t bytes, int slot = 0) {
  thread_local std::vector<uint8_t> buffers[2];
  if (buffers[slot].size() < bytes) buffers[slot].resize(bytes);
  return buffers[slot].data();
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// int8 A -> A + 128 as unsigned bytes, K padded to Kp with 128 (i.e. zero).
uint8_t* unsigned_rows(const int8_t* A, int64_t M, int64_t K, int64_t Kp) {
  uint8_t* au = scratch(M * Kp);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t i = 0; i < M; ++i) {
    std::memset(au + i * Kp + K, 128, Kp - K);
    for (int64_t k = 0; k < K; k += 64) {
      const int64_t left = K - k;
      const __mmask64 mask = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
      const __m512i v = _mm512_maskz_loadu_epi8(mask, A + i * K + k);
      _mm512_mask_storeu_epi8(au + i * Kp + k, mask, _mm512_xor_si512(v, flip));
    }
  }
  return au;
}

// 64 floats -> round_half_even(x * inv_s) clamped to +-127, plus 128, as 64 bytes in order:
// two saturating packs and one dword permute instead of four vpmovdb (2 uops each on Zen 4).
inline __m512i unsigned_bytes64(const float* x, __m512 inv_s) {
  const __m512i q0 = quantize_epi32(_mm512_loadu_ps(x), inv_s);
  const __m512i q1 = quantize_epi32(_mm512_loadu_ps(x + 16), inv_s);
  const __m512i q2 = quantize_epi32(_mm512_loadu_ps(x + 32), inv_s);
  const __m512i q3 = quantize_epi32(_mm512_loadu_ps(x + 48), inv_s);
  // per 128-bit lane l: q0[4l..4l+3], q1[4l..], q2[4l..], q3[4l..] (values fit: no saturation)
  const __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(q0, q1), _mm512_packs_epi32(q2, q3));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_xor_si512(_mm512_permutexvar_epi32(order, bytes), _mm512_set1_epi8(static_cast<char>(0x80)));
}

// max|x[0:n]| / 127, or 1 where x is all zeros (q = 0 either way): the XLA path's safe_scale.
inline float symmetric_scale(const float* x, int64_t n) {
  __m512 vmax = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
  if (k < n) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - k), x + k)));
  const float m = _mm512_reduce_max_ps(vmax);
  return m > 0.0f ? m / 127.0f : 1.0f;
}

// dst[0:n] = round_half_even(src[0:n] * inv_s) clamped to +-127, plus 128: 64 at a time,
// then whole vectors (plain loads and stores: masked ones are slow), then a masked tail.
inline void quantize_copy(uint8_t* dst, const float* src, int64_t n, __m512 inv_s) {
  const __m512i offset = _mm512_set1_epi32(128);
  int64_t k = 0;
  for (; k + 64 <= n; k += 64) _mm512_storeu_si512(dst + k, unsigned_bytes64(src + k, inv_s));
  for (; k + 16 <= n; k += 16) {
    const __m512i u = _mm512_add_epi32(quantize_epi32(_mm512_loadu_ps(src + k), inv_s), offset);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm512_cvtepi32_epi8(u));
  }
  if (k < n) {
    const __mmask16 mask = tail_mask(n - k);
    const __m512i u = _mm512_add_epi32(quantize_epi32(_mm512_maskz_loadu_ps(mask, src + k), inv_s), offset);
    _mm_mask_storeu_epi8(dst + k, mask, _mm512_cvtepi32_epi8(u));
  }
}

// float A -> per-row symmetric int8 (scale = max|row| / 127, 1 for a zero row; q =
// round_half_even(a * (1 / scale)) clamped to +-127, the float operations of the XLA path),
// stored as q + 128 with K padded to Kp. With fixed_scale > 0 every row uses that scale (a
// calibrated input quantize folded into the GEMM) and row_scale is not written.
// Rows are lda floats apart (0: K, packed).
uint8_t* quantized_rows(const float* A, int64_t M, int64_t K, int64_t Kp, float* row_scale,
                        float fixed_scale = 0.0f, int64_t lda = 0) {
  uint8_t* au = scratch(M * Kp);
  for (int64_t i = 0; i < M; ++i) {
    const float* row = A + i * (lda ? lda : K);
    float s = fixed_scale;
    if (s <= 0.0f) row_scale[i] = s = symmetric_scale(row, K);
    std::memset(au + i * Kp + K, 128, Kp - K);
    quantize_copy(au + i * Kp, row, K, _mm512_set1_ps(1.0f / s));
  }
  return au;
}

// dst[0:n] = src[0:n] + 128 (int8 -> unsigned), by 64-byte masked chunks.
inline void flip_copy(uint8_t* dst, const int8_t* src, int64_t n) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t k = 0; k < n; k += 64) {
    const int64_t left = n - k;
    const __mmask64 mask = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    _mm512_mask_storeu_epi8(dst + k, mask, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, src + k), flip));
  }
}

struct ConvGeometry {
  int64_t n, h, w, c;          // input, channels last
  int64_t kh, kw, sh, sw, dh, dw, pad_top, pad_left;
  int64_t oh, ow;              // output positions
};

// im2col without the XLA slices: the input is copied once, unsigned, into a buffer with
// its zero (128) border, then each output position's row of K = kh*kw*c bytes
// (window-major, then channel: the order of runtime.int8.im2col_weight) is a few short
// copies -- one per window row where dw == 1. K is padded to Kp with 128. Copies move
// CHUNK bytes at a time, so they may write up to CHUNK - 1 bytes past a run (and read past
// it): rows are written in ascending order with their tail last, and both buffers have 64
// bytes of slack.
// One CHUNK-byte move in a single load/store.
template <int CHUNK>
inline void move(uint8_t* dst, const uint8_t* src) {
  if constexpr (CHUNK == 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
  } else if constexpr (CHUNK == 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  } else if constexpr (CHUNK == 32) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  } else {
    _mm512_storeu_si512(dst, _mm512_loadu_si512(src));
  }
}

// (GCC would turn the copy loop back into a memcpy call per run: 10x slower for 3-byte runs)
template <int CHUNK>
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void gather_rows(const uint8_t* __restrict padded, int64_t hp, int64_t wp, const ConvGeometry& g, int64_t Kp,
                 uint8_t* __restrict au) {
  // locals, not g's fields: byte stores may alias anything, which would reload them per copy
  const int64_t n = g.n, oh = g.oh, ow = g.ow, kh = g.kh, kw = g.kw, c = g.c, sh = g.sh, sw = g.sw, dh = g.dh, dw = g.dw;
  const int64_t K = kh * kw * c;
  const int64_t run = dw == 1 ? kw * c : c;  // contiguous bytes per copy
  const int64_t runs = dw == 1 ? 1 : kw;
  const int64_t dst_step = dw == 1 ? 0 : c, src_step = dw * c;
  for (int64_t b = 0; b < n; ++b)
    for (int64_t oy = 0; oy < oh; ++oy) {
      uint8_t* row = au + (b * oh + oy) * ow * Kp;
      for (int64_t ox = 0; ox < ow; ++ox, row += Kp) {
        const uint8_t* window = padded + ((b * hp + oy * sh) * wp + ox * sw) * c;
        for (int64_t i = 0; i < kh; ++i) {
          const uint8_t* src = window + i * dh * wp * c;
          uint8_t* dst = row + i * kw * c;
          for (int64_t j = 0; j < runs; ++j, src += src_step, dst += dst_step)
            for (int64_t k = 0; k < run; k += CHUNK) move<CHUNK>(dst + k, src + k);
        }
        std::memcpy(row + K, "\x80\x80\x80\x80", 4);  // Kp - K < 4; may spill into the next row
      }
    }
}

// fill_row(dst, b, y) writes input row y of sample b (w * c unsigned bytes) to dst.
template <typename FillRow>
uint8_t* im2col_rows(const ConvGeometry& g, int64_t Kp, FillRow fill_row) {
  const int64_t hp = std::max(g.pad_top + g.h, (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1);
  const int64_t wp = std::max(g.pad_left + g.w, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1);
  const int64_t padded_bytes = g.n * hp * wp * g.c;
  uint8_t* padded = scratch(padded_bytes + 64, 1);
  std::memset(padded, 128, padded_bytes);
  for (int64_t b = 0; b < g.n; ++b)
    for (int64_t y = 0; y < g.h; ++y) fill_row(padded + ((b * hp + y + g.pad_top) * wp + g.pad_left) * g.c, b, y);
  uint8_t* au = scratch(g.n * g.oh * g.ow * Kp + 64);
  const int64_t run = g.dw == 1 ? g.kw * g.c : g.c;
  if (run <= 8) gather_rows<8>(padded, hp, wp, g, Kp, au);
  else if (run <= 16) gather_rows<16>(padded, hp, wp, g, Kp, au);
  else if (run <= 32) gather_rows<32>(padded, hp, wp, g, Kp, au);
  else gather_rows<64>(padded, hp, wp, g, Kp, au);
  return au;
}

// Quantizes each of the N rows of float B [N, K] (scale = max|row| / 127, as for A; rows
// ldb floats apart) and packs them as the weight layout's columns: panels of 32, k in
// groups of 4, zero padded.
void quantize_and_pack(const float* B, int64_t N, int64_t K, int64_t ldb, int64_t Kp, int8_t* packed,
                       int32_t* colsum, float* scale) {
  const int64_t k4 = Kp / 4, panels = (N + 31) / 32;
  std::memset(packed, 0, panels * k4 * 128);
  alignas(64) int8_t q[16];
  for (int64_t n = 0; n < N; ++n) {
    const float* row = B + n * ldb;
    const float s = scale[n] = symmetric_scale(row, K);
    const __m512 inv_s = _mm512_set1_ps(1.0f / s);
    int8_t* col = packed + (n / 32) * k4 * 128 + (n % 32) * 4;
    __m512i sum = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mask = tail_mask(K - k);
      const __m512i qi = _mm512_maskz_mov_epi32(mask, quantize_epi32(_mm512_maskz_loadu_ps(mask, row + k), inv_s));
      sum = _mm512_add_epi32(sum, qi);
      _mm_store_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(qi));
      for (int64_t g = 0; g < 4 && k + 4 * g < K; ++g) std::memcpy(col + ((k / 4) + g) * 128, q + 4 * g, 4);
    }
    colsum[n] = _mm512_reduce_add_epi32(sum);
  }
}

const float* optional(ffi::Buffer<ffi::F32>& b) {
  return b.element_count() == 0 ? nullptr : b.typed_data();
}

}  // namespace

// The float epilogue: float [M,N], or int8 when out_scale is given. row_scale (size M or
// 0), bias (N or 0) and out_scale (1 or 0) are optional.
template <typename Pool>
static ffi::Error EpilogueGemm(Pool& pool, const uint8_t* au, int64_t M, int64_t Kp, int64_t N,
                               ffi::Buffer<ffi::S8>& packed, ffi::Buffer<ffi::S32>& colsum,
                               const float* row_scale, ffi::Buffer<ffi::F32>& col_scale,
                               ffi::Buffer<ffi::F32>& bias, ffi::Buffer<ffi::F32>& out_scale,
                               ffi::Result<ffi::AnyBuffer>& out, int32_t activation) {
  if (activation < kNone || activation > kLast) return ffi::Error::InvalidArgument("unknown activation");
  const bool requantize = out_scale.element_count() != 0;
  if (requantize != (out->element_type() == ffi::DataType::S8))
    return ffi::Error::InvalidArgument("an int8 result needs out_scale, a float one must not have it");
  const float inv = requantize ? 1.0f / out_scale.typed_data()[0] : 0.0f;
  const Epilogue epi{colsum.typed_data(), row_scale, col_scale.typed_data(), optional(bias), activation, inv,
                     out->untyped_data(), N};
  gemm(au, M, Kp, packed.typed_data(), N, epi, pool);
  return ffi::Error::Success();
}

template <typename Pool>
static ffi::Error QuantizedGemmImpl(Pool pool, ffi::Buffer<ffi::S8> a, ffi::Buffer<ffi::S8> packed,
                                    ffi::Buffer<ffi::S32> colsum, ffi::Buffer<ffi::F32> row_scale,
                                    ffi::Buffer<ffi::F32> col_scale, ffi::Buffer<ffi::F32> bias,
                                    ffi::Buffer<ffi::F32> out_scale, ffi::Result<ffi::AnyBuffer> out,
                                    int32_t activation) {
  const int64_t M = a.dimensions()[0], K = a.dimensions()[1], N = out->dimensions()[1];
  const int64_t Kp = (K + 3) / 4 * 4;
  const uint8_t* au = unsigned_rows(a.typed_data(), M, K, Kp);
  return EpilogueGemm(pool, au, M, Kp, N, packed, colsum, optional(row_scale), col_scale, bias, out_scale, out,
                      activation);
}

// The geometry of a channels-last 2-D window op from its FFI attributes (dilation empty: 1),
// or false when they are not a 4-D input and 2-D attributes.
bool window_geometry(ffi::Span<const int64_t> d, ffi::Span<const int64_t> window,
                     ffi::Span<const int64_t> strides, ffi::Span<const int64_t> dilation,
                     ffi::Span<const int64_t> padding_low, ffi::Span<const int64_t> out_size, ConvGeometry& g) {
  if (d.size() != 4 || window.size() != 2 || strides.size() != 2 || (dilation.size() != 2 && dilation.size() != 0) ||
      padding_low.size() != 2 || out_size.size() != 2)
    return false;
  const bool undilated = dilation.size() == 0;
  const int64_t dh = undilated ? 1 : dilation[0], dw = undilated ? 1 : dilation[1];
  g = ConvGeometry{d[0], d[1], d[2], d[3], window[0], window[1], strides[0], strides[1],
                   dh, dw, padding_low[0], padding_low[1], out_size[0], out_size[1]};
  return true;
}

// The shared body of both convolutions: patches gathered from the padded input that
// fill_row writes, then the GEMM and epilogue into out [N * OH * OW, O].
template <typename Pool, typename FillRow>
ffi::Error ConvGemm(Pool& pool, const ConvGeometry& g, FillRow fill_row, ffi::Buffer<ffi::S8>& packed,
                    ffi::Buffer<ffi::S32>& colsum, const float* row_scale, ffi::Buffer<ffi::F32>& col_scale,
                    ffi::Buffer<ffi::F32>& bias, ffi::Buffer<ffi::F32>& out_scale, ffi::Result<ffi::AnyBuffer>& out,
                    int32_t activation) {
  const int64_t M = g.n * g.oh * g.ow, N = out->dimensions()[1];
  if (out->dimensions()[0] != M) return ffi::Error::InvalidArgument("output rows != N * OH * OW");
  const int64_t Kp = (g.kh * g.kw * g.c + 3) / 4 * 4;
  const uint8_t* au = im2col_rows(g, Kp, fill_row);
  return EpilogueGemm(pool, au, M, Kp, N, packed, colsum, row_scale, col_scale, bias, out_scale, out, activation);
}

// The calibrated scale of a float-input call: 0 where x_scale is empty (quantize on the
// fly), else its value; -1 when that is not > 0.
float fixed_scale(ffi::Buffer<ffi::F32>& x_scale) {
  if (x_scale.element_count() == 0) return 0.0f;
  const float s = x_scale.typed_data()[0];
  return s > 0.0f ? s : -1.0f;
}

// A 2-D convolution of int8 x [N, H, W, C] as im2col rows times the packed weight, with the
// float epilogue; out is [N * OH * OW, O].
template <typename Pool>
static ffi::Error QuantizedConvImpl(Pool pool, ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::S8> packed,
                                    ffi::Buffer<ffi::S32> colsum, ffi::Buffer<ffi::F32> row_scale,
                                    ffi::Buffer<ffi::F32> col_scale, ffi::Buffer<ffi::F32> bias,
                                    ffi::Buffer<ffi::F32> out_scale, ffi::Result<ffi::AnyBuffer> out,
                                    int32_t activation, ffi::Span<const int64_t> window,
                                    ffi::Span<const int64_t> strides, ffi::Span<const int64_t> dilation,
                                    ffi::Span<const int64_t> padding_low, ffi::Span<const int64_t> out_size) {
  ConvGeometry g;
  if (!window_geometry(x.dimensions(), window, strides, dilation, padding_low, out_size, g))
    return ffi::Error::InvalidArgument("jaxlite_quantized_conv takes NHWC input and 2-D window attributes");
  const int8_t* xs = x.typed_data();
  auto fill_row = [&](uint8_t* dst, int64_t b, int64_t y) { flip_copy(dst, xs + (b * g.h + y) * g.w * g.c, g.w * g.c); };
  return ConvGemm(pool, g, fill_row, packed, colsum, optional(row_scale), col_scale, bias, out_scale, out, activation);
}

// Convolution of a float x [N, H, W, C], quantized while it is copied into the padded
// buffer: per sample (scale = max|x[b]| / 127, as the XLA path; each sample's scale on its
// rows in the epilogue), or with x_scale when given (calibrated; folded into col_scale by
// the caller). Then the patches and the epilogue as for int8 input.
template <typename Pool>
static ffi::Error DynamicConvImpl(Pool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> packed,
                                  ffi::Buffer<ffi::S32> colsum, ffi::Buffer<ffi::F32> w_scale,
                                  ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> out_scale,
                                  ffi::Buffer<ffi::F32> x_scale, ffi::Result<ffi::AnyBuffer> out,
                                  int32_t activation, ffi::Span<const int64_t> window,
                                  ffi::Span<const int64_t> strides, ffi::Span<const int64_t> dilation,
                                  ffi::Span<const int64_t> padding_low, ffi::Span<const int64_t> out_size) {
  const float fixed = fixed_scale(x_scale);
  if (fixed < 0.0f) return ffi::Error::InvalidArgument("x_scale must be > 0");
  ConvGeometry g;
  if (!window_geometry(x.dimensions(), window, strides, dilation, padding_low, out_size, g))
    return ffi::Error::InvalidArgument("jaxlite_dynamic_conv takes NHWC input and 2-D window attributes");
  const int64_t positions = g.oh * g.ow, sample = g.h * g.w * g.c;
  const float* xs = x.typed_data();
  std::vector<float> inv(g.n, fixed > 0.0f ? 1.0f / fixed : 0.0f), row_scale(fixed > 0.0f ? 0 : g.n * positions);
  for (int64_t b = 0; b < g.n && fixed == 0.0f; ++b) {
    const float s = symmetric_scale(xs + b * sample, sample);
    inv[b] = 1.0f / s;
    std::fill(row_scale.begin() + b * positions, row_scale.begin() + (b + 1) * positions, s);
  }
  auto fill_row = [&](uint8_t* dst, int64_t b, int64_t y) {
    quantize_copy(dst, xs + (b * g.h + y) * g.w * g.c, g.w * g.c, _mm512_set1_ps(inv[b]));
  };
  return ConvGemm(pool, g, fill_row, packed, colsum, fixed > 0.0f ? nullptr : row_scale.data(), w_scale, bias,
                  out_scale, out, activation);
}

// Max pooling of x [N, H, W, C] (C contiguous) into out [N, OH, OW, C]: window positions
// outside the input are skipped, which is lax.reduce_window_max's padding with the lowest
// value. Runs inline as a custom call: as an XLA loop fusion it was the one XLA op of the
// int8 digits CNN, and (one core) its work went to a pool thread sharing the core.
template <typename T, typename Pool>
void max_pool(const T* x, T* out, const ConvGeometry& g, Pool& pool) {
  constexpr int64_t L = 64 / sizeof(T);  // lanes per zmm
  const int64_t c = g.c, rows = g.n * g.oh;
  const int64_t threads = std::min<int64_t>({usable_threads(pool), rows, rows * g.ow * c / (1 << 16)});
  const int64_t chunks = threads <= 1 ? 1 : std::min<int64_t>(rows, 4 * threads);
  parallel_for(pool, threads, chunks, [=](int64_t chunk) {
    for (int64_t row = rows * chunk / chunks; row < rows * (chunk + 1) / chunks; ++row) {
      const int64_t b = row / g.oh, oy = row % g.oh;
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        T* dst = out + ((b * g.oh + oy) * g.ow + ox) * c;
        for (int64_t k = 0; k < c; k += L) {
          const int64_t left = c - k;
          __m512i acc;
          __mmask64 m8 = 0;
          __mmask16 m32 = 0;
          if constexpr (sizeof(T) == 1) {
            m8 = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
            acc = _mm512_set1_epi8(-128);
          } else {
            m32 = tail_mask(left);
            acc = _mm512_castps_si512(_mm512_set1_ps(-std::numeric_limits<float>::infinity()));
          }
          for (int64_t ky = 0; ky < g.kh; ++ky) {
            const int64_t iy = oy * g.sh - g.pad_top + ky;
            if (iy < 0 || iy >= g.h) continue;
            for (int64_t kx = 0; kx < g.kw; ++kx) {
              const int64_t ix = ox * g.sw - g.pad_left + kx;
              if (ix < 0 || ix >= g.w) continue;
              const T* src = x + ((b * g.h + iy) * g.w + ix) * c + k;
              if constexpr (sizeof(T) == 1) acc = _mm512_max_epi8(acc, _mm512_maskz_loadu_epi8(m8, src));
              else acc = _mm512_castps_si512(_mm512_max_ps(_mm512_castsi512_ps(acc), _mm512_maskz_loadu_ps(m32, src)));
            }
          }
          if constexpr (sizeof(T) == 1) _mm512_mask_storeu_epi8(dst + k, m8, acc);
          else _mm512_mask_storeu_ps(dst + k, m32, _mm512_castsi512_ps(acc));
        }
      }
    }
  });
}

template <typename Pool>
static ffi::Error MaxPoolImpl(Pool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out,
                              ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                              ffi::Span<const int64_t> padding_low, ffi::Span<const int64_t> out_size) {
  ConvGeometry g;
  if (!window_geometry(x.dimensions(), window, strides, {}, padding_low, out_size, g) ||
      out->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("jaxlite_max_pool takes [N, H, W, C] and 2-D window attributes");
  if (x.element_type() == ffi::DataType::S8)
    max_pool(static_cast<const int8_t*>(x.untyped_data()), static_cast<int8_t*>(out->untyped_data()), g, pool);
  else if (x.element_type() == ffi::DataType::F32)
    max_pool(static_cast<const float*>(x.untyped_data()), static_cast<float*>(out->untyped_data()), g, pool);
  else
    return ffi::Error::InvalidArgument("jaxlite_max_pool takes int8 or float32");
  return ffi::Error::Success();
}

// A batch of products of two float activations, A [B, M, K] x B [B, N, K]^T -> [B, M, N]:
// A's rows and B's rows both quantized on the fly (one scale each), B packed per batch,
// out = (acc * a_scale[m]) * b_scale[n]. The operands are read in place through strides
// (batch, row; K contiguous), so attention's heads need no transposes: q and k come
// straight from their [seq, heads, head_dim] projections. Batches are spread over the
// thread pool.
template <typename Pool>
static ffi::Error DynamicActGemmImpl(Pool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                                     ffi::ResultBuffer<ffi::F32> out, ffi::Span<const int64_t> sizes,
                                     ffi::Span<const int64_t> strides) {
  if (sizes.size() != 4 || strides.size() != 4)
    return ffi::Error::InvalidArgument("jaxlite_dynamic_act_gemm: sizes [B, M, N, K], strides [4]");
  const int64_t batches = sizes[0], M = sizes[1], N = sizes[2], K = sizes[3];
  const int64_t a_batch = strides[0], a_row = strides[1], b_batch = strides[2], b_row = strides[3];
  const auto fits = [K](int64_t elements, int64_t n_batch, int64_t b_stride, int64_t rows, int64_t r_stride) {
    return b_stride >= 0 && r_stride >= K && (n_batch - 1) * b_stride + (rows - 1) * r_stride + K <= elements;
  };
  if (batches < 1 || M < 1 || N < 1 || K < 1 || !fits(a.element_count(), batches, a_batch, M, a_row) ||
      !fits(b.element_count(), batches, b_batch, N, b_row) ||
      static_cast<int64_t>(out->element_count()) != batches * M * N)
    return ffi::Error::InvalidArgument("jaxlite_dynamic_act_gemm: sizes and strides do not fit the operands");
  const int64_t Kp = (K + 3) / 4 * 4, panels = (N + 31) / 32;
  const float* A = a.typed_data();
  const float* Bm = b.typed_data();
  float* C = out->typed_data();
  auto one = [=](int64_t i) {
    std::vector<float> row_scale(M), col_scale(N);
    std::vector<int32_t> colsum(N);
    const uint8_t* au = quantized_rows(A + i * a_batch, M, K, Kp, row_scale.data(), 0.0f, a_row);
    int8_t* packed = reinterpret_cast<int8_t*>(scratch(panels * Kp * 32, 1));
    quantize_and_pack(Bm + i * b_batch, N, K, b_row, Kp, packed, colsum.data(), col_scale.data());
    const Epilogue epi{colsum.data(), row_scale.data(), col_scale.data(), nullptr, kNone, 0.0f, C + i * M * N, N};
    gemm_panels(au, M, Kp, packed, N, 0, panels, epi);
  };
  const int64_t threads = std::min<int64_t>({usable_threads(pool), batches, batches * M * Kp * N / (1 << 19)});
  parallel_for(pool, threads, batches, one);
  return ffi::Error::Success();
}

// Dynamic range: float A quantized per row on the fly, then the float epilogue with the
// row scales (out = ((acc * row_scale) * w_scale + bias) -> activation).
template <typename Pool>
static ffi::Error DynamicGemmImpl(Pool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::S8> packed,
                                  ffi::Buffer<ffi::S32> colsum, ffi::Buffer<ffi::F32> w_scale,
                                  ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> out_scale,
                                  ffi::Buffer<ffi::F32> x_scale, ffi::Result<ffi::AnyBuffer> out,
                                  int32_t activation) {
  const int64_t M = a.dimensions()[0], K = a.dimensions()[1], N = out->dimensions()[1];
  const int64_t Kp = (K + 3) / 4 * 4;
  const float fixed = fixed_scale(x_scale);
  if (fixed < 0.0f) return ffi::Error::InvalidArgument("x_scale must be > 0");
  std::vector<float> row_scale(fixed > 0.0f ? 0 : M);
  const uint8_t* au = quantized_rows(a.typed_data(), M, K, Kp, row_scale.data(), fixed);
  return EpilogueGemm(pool, au, M, Kp, N, packed, colsum, fixed > 0.0f ? nullptr : row_scale.data(), w_scale,
                      bias, out_scale, out, activation);
}

// Row operations over the last axis of a float32 [R, N] array (jfuse.layer_norm,
// jfuse.softmax): one pass over each row while it is in cache, rows split over the thread
// pool when there are many. As XLA fusions each is four ops, two of them reductions.
namespace {

template <typename Pool, typename F>
void for_rows(Pool& pool, int64_t rows, int64_t n, F row_fn) {
  const int64_t threads = std::min<int64_t>({usable_threads(pool), rows, rows * n / (1 << 15)});
  const int64_t chunks = threads <= 1 ? 1 : std::min<int64_t>(rows, 4 * threads);
  parallel_for(pool, threads, chunks, [=](int64_t c) {
    for (int64_t r = rows * c / chunks; r < rows * (c + 1) / chunks; ++r) row_fn(r);
  });
}

// A scale or bias of a row op: nullptr (absent), one value for every column, or N values.
struct RowVector {
  const float* data;
  bool per_column;
  __m512 at(int64_t k, __mmask16 m) const {
    return per_column ? _mm512_maskz_loadu_ps(m, data + k) : _mm512_set1_ps(*data);
  }
};

bool row_vector(ffi::Buffer<ffi::F32>& v, int64_t n, RowVector& out) {
  out = {v.element_count() ? v.typed_data() : nullptr, static_cast<int64_t>(v.element_count()) == n};
  return v.element_count() <= 1 || static_cast<int64_t>(v.element_count()) == n;
}

}  // namespace

// y = (x - mean) * (1 / sqrt(var + epsilon)) * scale + bias, var of the centred values.
template <typename Pool>
static ffi::Error LayerNormImpl(Pool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                                ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> out, float epsilon) {
  const auto d = x.dimensions();
  if (d.size() != 2) return ffi::Error::InvalidArgument("jaxlite_layer_norm takes [R, N]");
  const int64_t rows = d[0], n = d[1];
  RowVector g, b;
  if (!row_vector(scale, n, g) || !row_vector(bias, n, b))
    return ffi::Error::InvalidArgument("jaxlite_layer_norm: scale and bias have 0, 1 or N values");
  const float* X = x.typed_data();
  float* Y = out->typed_data();
  for_rows(pool, rows, n, [=](int64_t r) {
    const float* xr = X + r * n;
    float* yr = Y + r * n;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; k += 16) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(tail_mask(n - k), xr + k));
    const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(acc) / static_cast<float>(n));
    acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; k += 16) {
      const __mmask16 m = tail_mask(n - k);
      const __m512 c = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, xr + k), mean);
      acc = _mm512_fmadd_ps(c, c, acc);
    }
    const float var = _mm512_reduce_add_ps(acc) / static_cast<float>(n);
    const __m512 rstd = _mm512_set1_ps(1.0f / std::sqrt(var + epsilon));
    for (int64_t k = 0; k < n; k += 16) {
      const __mmask16 m = tail_mask(n - k);
      __m512 y = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + k), mean), rstd);
      if (g.data) y = _mm512_mul_ps(y, g.at(k, m));
      if (b.data) y = _mm512_add_ps(y, b.at(k, m));
      _mm512_mask_storeu_ps(yr + k, m, y);
    }
  });
  return ffi::Error::Success();
}

// y = exp(x - max) / sum(exp(x - max)); a row whose max is -inf (or NaN) gives NaN, as
// jax.nn.softmax does.
template <typename Pool>
static ffi::Error SoftmaxImpl(Pool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out) {
  const auto d = x.dimensions();
  if (d.size() != 2) return ffi::Error::InvalidArgument("jaxlite_softmax takes [R, N]");
  const int64_t rows = d[0], n = d[1];
  const float* X = x.typed_data();
  float* Y = out->typed_data();
  for_rows(pool, rows, n, [=](int64_t r) {
    const float* xr = X + r * n;
    float* yr = Y + r * n;
    const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 vmax = lowest;
    for (int64_t k = 0; k < n; k += 16)
      vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(lowest, tail_mask(n - k), xr + k));
    const float peak = _mm512_reduce_max_ps(vmax);
    if (!(peak > -std::numeric_limits<float>::infinity()) || std::isnan(peak)) {
      std::fill(yr, yr + n, std::numeric_limits<float>::quiet_NaN());
      return;
    }
    const __m512 shift = _mm512_set1_ps(peak);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; k += 16) {
      const __mmask16 m = tail_mask(n - k);
      const __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + k), shift)));
      sum = _mm512_add_ps(sum, e);
      _mm512_mask_storeu_ps(yr + k, m, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t k = 0; k < n; k += 16) {
      const __mmask16 m = tail_mask(n - k);
      _mm512_mask_storeu_ps(yr + k, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, yr + k), inv));
    }
  });
  return ffi::Error::Success();
}

// Per-row symmetric quantization of float32 x [M, K] into int8 q and scales [M], exactly as
// the dynamic GEMM does it inside (scale = max|row| / 127, 1 for a zero row; q =
// round_half_even(x * (1 / scale)) clamped to +-127). For an input that several dynamic
// dots read (attention's q, k and v projections of one LayerNorm output): quantized once,
// then each GEMM takes the int8 rows with their scales.
template <typename Pool>
static ffi::Error QuantizeRowsImpl(Pool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::S8> q,
                                   ffi::ResultBuffer<ffi::F32> scale) {
  const auto d = x.dimensions();
  if (d.size() != 2 || static_cast<int64_t>(scale->element_count()) != d[0])
    return ffi::Error::InvalidArgument("jaxlite_quantize_rows takes [M, K] and gives [M, K] and [M]");
  const int64_t rows = d[0], n = d[1];
  const float* X = x.typed_data();
  int8_t* Q = q->typed_data();
  float* S = scale->typed_data();
  for_rows(pool, rows, n, [=](int64_t r) {
    const float* xr = X + r * n;
    const float s = S[r] = symmetric_scale(xr, n);
    const __m512 inv_s = _mm512_set1_ps(1.0f / s);
    for (int64_t k = 0; k < n; k += 16) {
      const __mmask16 m = tail_mask(n - k);
      _mm_mask_storeu_epi8(Q + r * n + k, m, _mm512_cvtepi32_epi8(quantize_epi32(_mm512_maskz_loadu_ps(m, xr + k), inv_s)));
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteQuantizeRows, QuantizeRowsImpl<ffi::ThreadPool>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteLayerNorm, LayerNormImpl<ffi::ThreadPool>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteSoftmax, SoftmaxImpl<ffi::ThreadPool>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteDynamicActGemm, DynamicActGemmImpl<ffi::ThreadPool>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("sizes")
                                  .Attr<ffi::Span<const int64_t>>("strides"));

// The GEMMs and convolutions with an epilogue: input (int8 rows or input: S8; float, quantized
// in the kernel: F32), packed weight, column sums, then four float vectors -- row scales,
// column scales, bias, out scale (S8) or weight scales, bias, out scale, calibrated input
// scale (F32) -- -> float or int8; the epilogue's activation.
template <ffi::DataType Input>
static auto EpilogueBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<Input>>()
      .template Arg<ffi::Buffer<ffi::S8>>()
      .template Arg<ffi::Buffer<ffi::S32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Ret<ffi::AnyBuffer>()
      .template Attr<int32_t>("activation");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteQuantizedGemm, QuantizedGemmImpl<ffi::ThreadPool>, EpilogueBinding<ffi::S8>());

// A convolution's window attributes, after its binding's.
template <typename Binding>
static auto WithWindow(Binding binding) {
  return std::move(binding).template Attr<ffi::Span<const int64_t>>("window")
      .template Attr<ffi::Span<const int64_t>>("strides")
      .template Attr<ffi::Span<const int64_t>>("dilation")
      .template Attr<ffi::Span<const int64_t>>("padding_low")
      .template Attr<ffi::Span<const int64_t>>("out_size");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteQuantizedConv, QuantizedConvImpl<ffi::ThreadPool>, WithWindow(EpilogueBinding<ffi::S8>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteDynamicConv, DynamicConvImpl<ffi::ThreadPool>, WithWindow(EpilogueBinding<ffi::F32>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteMaxPool, MaxPoolImpl<ffi::ThreadPool>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("window")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding_low")
                                  .Attr<ffi::Span<const int64_t>>("out_size"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxliteDynamicGemm, DynamicGemmImpl<ffi::ThreadPool>, EpilogueBinding<ffi::F32>());

// ---------------------------------------------------------------------------------------
// Direct calls: the same kernels without XLA (runtime/host_plan.py), for programs so small
// that XLA's per-call cost (~10-20 us) is most of their time. The caller describes every
// operand and result as (data pointer, XLA_FFI_DataType, rank, dims); integer attributes
// come flattened in the binding's order, float ones likewise. Work runs on the calling
// thread. Returns nullptr, or the error message (valid until the thread's next call).
namespace {

// Runs work on the caller's thread only (parallel_for never schedules with one thread).
struct InlinePool {
  int64_t num_threads() const { return 1; }
  template <typename F>
  void Schedule(F&&) {}
};

constexpr int64_t kMaxDirectBuffers = 8;

class DirectBuffers {
 public:
  DirectBuffers(int64_t count, void* const* data, const int32_t* dtypes, const int64_t* ranks, const int64_t* dims)
      : count_(count) {
    for (int64_t i = 0, offset = 0; i < count && i < kMaxDirectBuffers; offset += ranks[i], ++i)
      buffers_[i] = XLA_FFI_Buffer{XLA_FFI_Buffer_STRUCT_SIZE, nullptr, static_cast<XLA_FFI_DataType>(dtypes[i]),
                                   data[i], ranks[i], const_cast<int64_t*>(dims + offset)};
  }
  // Whether there are `count` buffers and buffer i has dtype types[i] (-1: any).
  bool matches(std::initializer_list<int32_t> types) const {
    if (count_ != static_cast<int64_t>(types.size()) || count_ > kMaxDirectBuffers) return false;
    int64_t i = 0;
    for (int32_t t : types) {
      if (t >= 0 && buffers_[i].dtype != static_cast<XLA_FFI_DataType>(t)) return false;
      ++i;
    }
    return true;
  }
  template <ffi::DataType T>
  ffi::Buffer<T> buffer(int64_t i) const { return ffi::Buffer<T>(&buffers_[i]); }
  ffi::AnyBuffer any(int64_t i) const { return ffi::AnyBuffer(&buffers_[i]); }

 private:
  int64_t count_;
  XLA_FFI_Buffer buffers_[kMaxDirectBuffers];
};

constexpr char kWrongOperands[] = "jaxlite direct call: wrong operand count or dtypes";
constexpr int32_t kS8 = XLA_FFI_DataType_S8, kS32 = XLA_FFI_DataType_S32, kF32 = XLA_FFI_DataType_F32, kAny = -1;

const char* message(const ffi::Error& error) {
  if (error.success()) return nullptr;
  thread_local std::string text;
  text = error.message();
  return text.c_str();
}

ffi::Span<const int64_t> span(const int64_t* values, int64_t count) { return {values, static_cast<size_t>(count)}; }

}  // namespace

#define JAXLITE_DIRECT(name)                                                                                 \
  extern "C" const char* name(int64_t count, void* const* data, const int32_t* dtypes, const int64_t* ranks, \
                              const int64_t* dims, const int64_t* iattr, const float* fattr)
#define JAXLITE_EXPECT(...)                          \
  DirectBuffers b(count, data, dtypes, ranks, dims); \
  if (!b.matches({__VA_ARGS__})) return kWrongOperands;

namespace {

// The GEMMs and convolutions with an epilogue (EpilogueBinding): input of dtype Input,
// packed weight, column sums, four float vectors, the result, then the activation (iattr[0]);
// impl(buffers..., activation) is the implementation with its remaining attributes bound.
template <ffi::DataType Input, typename Impl>
const char* epilogue_call(const DirectBuffers& b, const int64_t* iattr, Impl impl) {
  if (!b.matches({static_cast<int32_t>(Input), kS8, kS32, kF32, kF32, kF32, kF32, kAny})) return kWrongOperands;
  return message(impl(b.buffer<Input>(0), b.buffer<ffi::S8>(1), b.buffer<ffi::S32>(2), b.buffer<ffi::F32>(3),
                      b.buffer<ffi::F32>(4), b.buffer<ffi::F32>(5), b.buffer<ffi::F32>(6), b.any(7),
                      static_cast<int32_t>(iattr[0])));
}

// A convolution's window attributes (window, strides, dilation, padding_low, out_size: 2
// each, from iattr[1]) appended to impl's arguments.
template <typename Impl>
auto with_window(const int64_t* iattr, Impl impl) {
  return [=](auto... args) {
    return impl(args..., span(iattr + 1, 2), span(iattr + 3, 2), span(iattr + 5, 2), span(iattr + 7, 2),
                span(iattr + 9, 2));
  };
}

}  // namespace

#define JAXLITE_BUFFERS DirectBuffers(count, data, dtypes, ranks, dims)

JAXLITE_DIRECT(JaxliteDirectQuantizedGemm) {
  return epilogue_call<ffi::S8>(JAXLITE_BUFFERS, iattr, [](auto... a) { return QuantizedGemmImpl(InlinePool{}, a...); });
}

JAXLITE_DIRECT(JaxliteDirectDynamicGemm) {
  return epilogue_call<ffi::F32>(JAXLITE_BUFFERS, iattr, [](auto... a) { return DynamicGemmImpl(InlinePool{}, a...); });
}

JAXLITE_DIRECT(JaxliteDirectQuantizedConv) {
  return epilogue_call<ffi::S8>(JAXLITE_BUFFERS, iattr,
                                with_window(iattr, [](auto... a) { return QuantizedConvImpl(InlinePool{}, a...); }));
}

JAXLITE_DIRECT(JaxliteDirectDynamicConv) {
  return epilogue_call<ffi::F32>(JAXLITE_BUFFERS, iattr,
                                 with_window(iattr, [](auto... a) { return DynamicConvImpl(InlinePool{}, a...); }));
}

// iattr: window, strides, padding_low, out_size (2 each)
JAXLITE_DIRECT(JaxliteDirectMaxPool) {
  JAXLITE_EXPECT(kAny, kAny);
  return message(MaxPoolImpl(InlinePool{}, b.any(0), b.any(1), span(iattr, 2), span(iattr + 2, 2),
                             span(iattr + 4, 2), span(iattr + 6, 2)));
}

// iattr: sizes (4), strides (4)
JAXLITE_DIRECT(JaxliteDirectDynamicActGemm) {
  JAXLITE_EXPECT(kF32, kF32, kF32);
  return message(DynamicActGemmImpl(InlinePool{}, b.buffer<ffi::F32>(0), b.buffer<ffi::F32>(1), b.buffer<ffi::F32>(2),
                                    span(iattr, 4), span(iattr + 4, 4)));
}

// fattr: epsilon
JAXLITE_DIRECT(JaxliteDirectLayerNorm) {
  JAXLITE_EXPECT(kF32, kF32, kF32, kF32);
  return message(LayerNormImpl(InlinePool{}, b.buffer<ffi::F32>(0), b.buffer<ffi::F32>(1), b.buffer<ffi::F32>(2),
                               b.buffer<ffi::F32>(3), fattr[0]));
}

JAXLITE_DIRECT(JaxliteDirectSoftmax) {
  JAXLITE_EXPECT(kF32, kF32);
  return message(SoftmaxImpl(InlinePool{}, b.buffer<ffi::F32>(0), b.buffer<ffi::F32>(1)));
}

JAXLITE_DIRECT(JaxliteDirectQuantizeRows) {
  JAXLITE_EXPECT(kF32, kS8, kF32);
  return message(QuantizeRowsImpl(InlinePool{}, b.buffer<ffi::F32>(0), b.buffer<ffi::S8>(1), b.buffer<ffi::F32>(2)));
}

// A whole program of direct calls in one call from Python (one ctypes crossing, not one
// per kernel): steps run in order until one fails.
typedef const char* (*DirectFn)(int64_t, void* const*, const int32_t*, const int64_t*, const int64_t*,
                                const int64_t*, const float*);
struct DirectStep {
  DirectFn fn;
  int64_t count;
  void* const* data;
  const int32_t* dtypes;
  const int64_t* ranks;
  const int64_t* dims;
  const int64_t* iattr;
  const float* fattr;
};

extern "C" const char* JaxliteDirectRun(const DirectStep* steps, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const DirectStep& s = steps[i];
    if (const char* error = s.fn(s.count, s.data, s.dtypes, s.ranks, s.dims, s.iattr, s.fattr)) return error;
  }
  return nullptr;
}
