// Convolutions: the patches gathered in the kernel (im2col without XLA's slices), then the
// int8 GEMM with its epilogue (gemm.h). Two kernels: int8 input (QuantizedConv) and float
// input quantized per sample while it is copied (DynamicConv).
#include "bindings.h"
#include "gemm.h"
#include "window.h"

namespace jaxlite {

namespace {

// im2col without the XLA slices: the input is copied once, unsigned, into a buffer with
// its zero (128) border, then each output position's row of K = kh*kw*c bytes
// (window-major, then channel: the order of runtime.xla_int8.im2col_weight) is a few short
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

// fill_row(dst, b, y) writes input row y of sample b (w * c unsigned bytes) to dst and says
// whether it holds NaN's code (unsigned 0); nan_code is set if any does. The border holds
// each sample's zero: code 0 (128 unsigned), or 128 + sample_zero[b] when given.
template <typename FillRow>
uint8_t* im2col_rows(const ConvGeometry& g, int64_t Kp, FillRow fill_row, bool& nan_code,
                     const int32_t* sample_zero = nullptr) {
  const int64_t hp = std::max(g.pad_top + g.h, (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1);
  const int64_t wp = std::max(g.pad_left + g.w, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1);
  const int64_t padded_bytes = g.n * hp * wp * g.c;
  uint8_t* padded = scratch(padded_bytes + 64, 1);
  for (int64_t b = 0; b < g.n; ++b)
    std::memset(padded + b * hp * wp * g.c, sample_zero != nullptr ? 128 + sample_zero[b] : 128, hp * wp * g.c);
  for (int64_t b = 0; b < g.n; ++b)
    for (int64_t y = 0; y < g.h; ++y)
      nan_code |= fill_row(padded + ((b * hp + y + g.pad_top) * wp + g.pad_left) * g.c, b, y);
  uint8_t* au = scratch(g.n * g.oh * g.ow * Kp + 64);
  const int64_t run = g.dw == 1 ? g.kw * g.c : g.c;
  if (run <= 8) gather_rows<8>(padded, hp, wp, g, Kp, au);
  else if (run <= 16) gather_rows<16>(padded, hp, wp, g, Kp, au);
  else if (run <= 32) gather_rows<32>(padded, hp, wp, g, Kp, au);
  else gather_rows<64>(padded, hp, wp, g, Kp, au);
  return au;
}

// The shared body of both convolutions: patches gathered from the padded input that
// fill_row writes, then the GEMM and epilogue into out [N * OH * OW, O]; output positions
// whose window reads NaN's code are NaN (or its code). With sample_zero (asymmetric per
// sample: the border holds each sample's zero point, row_zero the same per output row)
// every code is a value.
template <typename Pool, typename FillRow>
ffi::Error ConvGemm(Pool& pool, const ConvGeometry& g, FillRow fill_row, ffi::Buffer<ffi::S8>& packed,
                    ffi::Buffer<ffi::S32>& colsum, const float* row_scale, ffi::Buffer<ffi::F32>& col_scale,
                    ffi::Buffer<ffi::F32>& bias, ffi::Buffer<ffi::F32>& out_scale, ffi::Result<ffi::AnyBuffer>& out,
                    int32_t activation, const int32_t* sample_zero = nullptr, const int32_t* row_zero = nullptr) {
  const int64_t M = g.n * g.oh * g.ow, N = out->dimensions()[1];
  if (out->dimensions()[0] != M) return ffi::Error::InvalidArgument("output rows != N * OH * OW");
  const int64_t Kp = (g.kh * g.kw * g.c + 3) / 4 * 4;
  bool nan_code = false;
  const uint8_t* au = im2col_rows(g, Kp, fill_row, nan_code, sample_zero);
  std::vector<float> storage;
  if (nan_code) row_scale = nan_row_scales(au, M, Kp, row_scale, storage);
  return EpilogueGemm(pool, au, M, Kp, N, packed, colsum, row_scale, col_scale, bias, out_scale, out, activation,
                      row_zero);
}

}  // namespace

// A 2-D convolution of int8 x [N, H, W, C] as im2col rows times the packed weight, with the
// float epilogue; out is [N * OH * OW, O].
template <typename Pool>
ffi::Error QuantizedConv(Pool pool, ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::S8> packed, ffi::Buffer<ffi::S32> colsum,
                         ffi::Buffer<ffi::F32> row_scale, ffi::Buffer<ffi::F32> col_scale, ffi::Buffer<ffi::F32> bias,
                         ffi::Buffer<ffi::F32> out_scale, ffi::Result<ffi::AnyBuffer> out, ActivationAttr activation,
                         IntsAttr<kWindow> window, IntsAttr<kStrides> strides, IntsAttr<kDilation> dilation,
                         IntsAttr<kPaddingLow> padding_low, IntsAttr<kOutSize> out_size) {
  ConvGeometry g;
  if (!window_geometry(x.dimensions(), *window, *strides, *dilation, *padding_low, *out_size, g))
    return ffi::Error::InvalidArgument("jaxlite_quantized_conv takes NHWC input and 2-D window attributes");
  const int8_t* xs = x.typed_data();
  auto fill_row = [&](uint8_t* dst, int64_t b, int64_t y) {
    return flip_copy(dst, xs + (b * g.h + y) * g.w * g.c, g.w * g.c);
  };
  return ConvGemm(pool, g, fill_row, packed, colsum, optional(row_scale), col_scale, bias, out_scale, out,
                  *activation);
}

// Convolution of a float x [N, H, W, C], quantized while it is copied into the padded
// buffer: per sample, asymmetric (dialects/int8.py asymmetric_params over the whole sample,
// as the XLA path; NaN scale for a sample with NaN or Inf), the border filled with the
// sample's zero point, each sample's scale and zero point on its rows in the epilogue; or
// symmetric with x_scale when given (calibrated; folded into col_scale by the caller). Then
// the patches and the epilogue as for int8 input.
template <typename Pool>
ffi::Error DynamicConv(Pool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> packed, ffi::Buffer<ffi::S32> colsum,
                       ffi::Buffer<ffi::F32> w_scale, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> out_scale,
                       ffi::Buffer<ffi::F32> x_scale, ffi::Result<ffi::AnyBuffer> out, ActivationAttr activation,
                       IntsAttr<kWindow> window, IntsAttr<kStrides> strides, IntsAttr<kDilation> dilation,
                       IntsAttr<kPaddingLow> padding_low, IntsAttr<kOutSize> out_size) {
  const float fixed = fixed_scale(x_scale);
  if (fixed < 0.0f) return ffi::Error::InvalidArgument("x_scale must be > 0");
  ConvGeometry g;
  if (!window_geometry(x.dimensions(), *window, *strides, *dilation, *padding_low, *out_size, g))
    return ffi::Error::InvalidArgument("jaxlite_dynamic_conv takes NHWC input and 2-D window attributes");
  const int64_t positions = g.oh * g.ow, sample = g.h * g.w * g.c;
  const float* xs = x.typed_data();
  if (fixed > 0.0f) {
    const __m512 inv = _mm512_set1_ps(1.0f / fixed);
    auto fill_row = [&](uint8_t* dst, int64_t b, int64_t y) {
      return quantize_copy(dst, xs + (b * g.h + y) * g.w * g.c, g.w * g.c, inv);
    };
    return ConvGemm(pool, g, fill_row, packed, colsum, nullptr, w_scale, bias, out_scale, out, *activation);
  }
  std::vector<float> scale(g.n), row_scale(g.n * positions);
  std::vector<int32_t> zero(g.n), row_zero(g.n * positions);
  for (int64_t b = 0; b < g.n; ++b) {
    asymmetric_params(xs + b * sample, sample, scale[b], zero[b]);
    std::fill(row_scale.begin() + b * positions, row_scale.begin() + (b + 1) * positions, scale[b]);
    std::fill(row_zero.begin() + b * positions, row_zero.begin() + (b + 1) * positions, zero[b]);
  }
  auto fill_row = [&](uint8_t* dst, int64_t b, int64_t y) {
    asymmetric_copy(dst, xs + (b * g.h + y) * g.w * g.c, g.w * g.c, 1.0f / scale[b], zero[b]);
    return false;  // a NaN or Inf makes the sample's scale NaN
  };
  return ConvGemm(pool, g, fill_row, packed, colsum, row_scale.data(), w_scale, bias, out_scale, out, *activation,
                  zero.data(), row_zero.data());
}

}  // namespace jaxlite

JAXLITE_EXPORT(QuantizedConv)
JAXLITE_EXPORT(DynamicConv)
