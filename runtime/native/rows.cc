// Row operations over the last axis of a float32 [R, N] array (jfuse.layer_norm,
// jfuse.softmax) and the per-row quantization several dynamic GEMMs share: one pass over
// each row while it is in cache, rows split over the thread pool when there are many. As
// XLA fusions each is four ops, two of them reductions.
#include "bindings.h"
#include "vector_math.h"

namespace jaxlite {

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
ffi::Error LayerNorm(Pool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
                     ffi::ResultBuffer<ffi::F32> out, ffi::Attr<float, kEpsilon> epsilon_attr) {
  const float epsilon = *epsilon_attr;
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
ffi::Error Softmax(Pool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out) {
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

// Per-row asymmetric quantization of float32 x [M, K] into int8 codes q, scales [M] and
// zero points [M], exactly as the dynamic GEMM does it inside (dialects/int8.py
// asymmetric_params and quantize_asymmetric). For an input that several dynamic dots read
// (attention's q, k and v projections of one LayerNorm output): quantized once, then each
// GEMM takes the int8 rows with their scales and zero points.
template <typename Pool>
ffi::Error QuantizeRows(Pool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::S8> q,
                        ffi::ResultBuffer<ffi::F32> scale, ffi::ResultBuffer<ffi::S32> zero) {
  const auto d = x.dimensions();
  if (d.size() != 2 || static_cast<int64_t>(scale->element_count()) != d[0] ||
      static_cast<int64_t>(zero->element_count()) != d[0])
    return ffi::Error::InvalidArgument("jaxlite_quantize_rows takes [M, K] and gives [M, K], [M] and [M]");
  const int64_t rows = d[0], n = d[1];
  const float* X = x.typed_data();
  uint8_t* Q = reinterpret_cast<uint8_t*>(q->typed_data());
  float* S = scale->typed_data();
  int32_t* Z = zero->typed_data();
  for_rows(pool, rows, n, [=](int64_t r) {
    const float* xr = X + r * n;
    asymmetric_params(xr, n, S[r], Z[r]);
    asymmetric_copy(Q + r * n, xr, n, 1.0f / S[r], Z[r], 0);
  });
  return ffi::Error::Success();
}

}  // namespace jaxlite

JAXLITE_EXPORT(LayerNorm)
JAXLITE_EXPORT(Softmax)
JAXLITE_EXPORT(QuantizeRows)
