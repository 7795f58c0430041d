// Max pooling over the two middle axes of a channels-last array, int8 or float32.
#include "bindings.h"
#include "window.h"

namespace jaxlite {

namespace {

// Max pooling of x [N, H, W, C] (C contiguous) into out [N, OH, OW, C]: window positions
// outside the input are skipped, which is lax.reduce_window_max's padding with the lowest
// value. A NaN wins (float), as does NaN's code -128 (int8 codes are compared as
// (q + 127) mod 256 unsigned, in which it is the largest; jquant.reduce_window_max). Runs inline as a custom call: as an XLA loop fusion it was the one XLA op of the
// int8 digits CNN, and (one core) its work went to a pool thread sharing the core.
template <typename T, typename Pool>
void max_pool(const T* x, T* out, const ConvGeometry& g, Pool& pool) {
  constexpr int64_t L = 64 / sizeof(T);  // lanes per zmm
  const int64_t c = g.c, rows = g.n * g.oh;
  const __m512i order = _mm512_set1_epi8(127);
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
            acc = _mm512_setzero_si512();  // ordered codes: 0 is -127
          } else {
            m32 = tail_mask(left);
            acc = _mm512_castps_si512(_mm512_set1_ps(-std::numeric_limits<float>::infinity()));
          }
          __mmask16 nan = 0;
          for (int64_t ky = 0; ky < g.kh; ++ky) {
            const int64_t iy = oy * g.sh - g.pad_top + ky;
            if (iy < 0 || iy >= g.h) continue;
            for (int64_t kx = 0; kx < g.kw; ++kx) {
              const int64_t ix = ox * g.sw - g.pad_left + kx;
              if (ix < 0 || ix >= g.w) continue;
              const T* src = x + ((b * g.h + iy) * g.w + ix) * c + k;
              if constexpr (sizeof(T) == 1) {
                acc = _mm512_max_epu8(acc, _mm512_add_epi8(_mm512_maskz_loadu_epi8(m8, src), order));
              } else {
                const __m512 v = _mm512_maskz_loadu_ps(m32, src);
                nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                acc = _mm512_castps_si512(_mm512_max_ps(_mm512_castsi512_ps(acc), v));
              }
            }
          }
          if constexpr (sizeof(T) == 1) {
            _mm512_mask_storeu_epi8(dst + k, m8, _mm512_sub_epi8(acc, order));
          } else {
            const __m512 out = _mm512_mask_mov_ps(_mm512_castsi512_ps(acc), nan,
                                                  _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
            _mm512_mask_storeu_ps(dst + k, m32, out);
          }
        }
      }
    }
  });
}

}  // namespace

// Window positions outside the input are skipped (lax's lowest-value padding).
template <typename Pool>
ffi::Error MaxPool(Pool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out, IntsAttr<kWindow> window,
                   IntsAttr<kStrides> strides, IntsAttr<kPaddingLow> padding_low, IntsAttr<kOutSize> out_size) {
  ConvGeometry g;
  if (!window_geometry(x.dimensions(), *window, *strides, {}, *padding_low, *out_size, g) ||
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

}  // namespace jaxlite

JAXLITE_EXPORT(MaxPool)
