// The geometry of channels-last 2-D window ops (convolution, max pooling) from their
// attributes.
#pragma once

#include "common.h"

namespace jaxlite {

struct ConvGeometry {
  int64_t n, h, w, c;          // input, channels last
  int64_t kh, kw, sh, sw, dh, dw, pad_top, pad_left;
  int64_t oh, ow;              // output positions
};

// The geometry of a channels-last 2-D window op from its FFI attributes (dilation empty: 1),
// or false when they are not a 4-D input and 2-D attributes.
inline bool window_geometry(Ints d, Ints window, Ints strides, Ints dilation, Ints padding_low, Ints out_size,
                            ConvGeometry& g) {
  if (d.size() != 4 || window.size() != 2 || strides.size() != 2 || (dilation.size() != 2 && dilation.size() != 0) ||
      padding_low.size() != 2 || out_size.size() != 2)
    return false;
  const bool undilated = dilation.size() == 0;
  const int64_t dh = undilated ? 1 : dilation[0], dw = undilated ? 1 : dilation[1];
  g = ConvGeometry{d[0], d[1], d[2], d[3], window[0], window[1], strides[0], strides[1],
                   dh, dw, padding_low[0], padding_low[1], out_size[0], out_size[1]};
  return true;
}

}  // namespace jaxlite
