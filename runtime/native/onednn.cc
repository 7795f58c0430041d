// Dense layers and convolutions on oneDNN (the `cpu-onednn` target), in float32 or in
// bfloat16 (a bfloat16 weight; the float32 input is rounded to bfloat16 in the call,
// accumulation, bias and result stay float32): one primitive
// per shape, made once and kept, with the bias and the activation fused into it; the weight
// is reordered into the primitive's own layout once, when the model is placed
// (JaxliteOnednn*Pack), so a call only wraps the buffers and runs it. oneDNN chooses its
// kernel from what the CPU has (AMX, AVX-512, AVX2) by itself. The int8 primitives below (the
// `cpu-onednn-int8` target, CPUs with AMX-INT8) serve jaxlite's int8 modes.
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "bindings.h"
#include "oneapi/dnnl/dnnl.hpp"

// jaxlite's int8 epilogue (gemm.h), which rescales the dynamic int8 matmul's products: AVX-512
// code in a library built for any x86-64, run only where the CPU has AMX-INT8 (and so AVX-512).
// Every function between AVX512_BEGIN and AVX512_END is compiled for AVX-512.
#if defined(__clang__)
#define AVX512_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx512bw,avx512dq,avx512vl,avx2,fma\"))), apply_to = function)")
#define AVX512_END _Pragma("clang attribute pop")
#else
#define AVX512_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512bw,avx512dq,avx512vl,avx2,fma\")")
#define AVX512_END _Pragma("GCC pop_options")
#endif
AVX512_BEGIN
#include "gemm.h"
AVX512_END

namespace jaxlite {

namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

// The activation codes of common.h as oneDNN eltwise post-ops (in jax.nn's definitions).
bool append_activation(dnnl::post_ops& ops, int32_t activation) {
  using alg = dnnl::algorithm;
  switch (activation) {
    case kNone: return true;
    case kRelu: ops.append_eltwise(alg::eltwise_relu, 0.0f, 0.0f); return true;
    case kRelu6: ops.append_eltwise(alg::eltwise_clip_v2, 0.0f, 6.0f); return true;
    case kSigmoid: ops.append_eltwise(alg::eltwise_logistic, 0.0f, 0.0f); return true;
    case kTanh: ops.append_eltwise(alg::eltwise_tanh, 0.0f, 0.0f); return true;
    case kSilu: ops.append_eltwise(alg::eltwise_swish, 1.0f, 0.0f); return true;
    case kGeluTanh: ops.append_eltwise(alg::eltwise_gelu_tanh, 0.0f, 0.0f); return true;
    case kGeluErf: ops.append_eltwise(alg::eltwise_gelu_erf, 0.0f, 0.0f); return true;
    default: return false;
  }
}

// A primitive made for one shape, with the layouts its operands are given in.
struct Prepared {
  dnnl::primitive primitive;
  dnnl::memory::desc src, weights, bias, dst;
  std::string implementation;
  // further arguments by execution index: runtime scales, zero points, post-op operands
  std::vector<std::pair<int, dnnl::memory::desc>> extra = {};
};

// Everything that shapes a primitive: its kind, then sizes, then flags.
using Key = std::vector<int64_t>;

struct KeyHash {
  size_t operator()(const Key& key) const {
    size_t h = key.size();
    for (int64_t v : key) h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

// The primitive of `key`, made by `make` on first use (oneDNN JIT-compiles its kernel then:
// milliseconds) and kept for the process. Errors are returned, never thrown across the FFI.
template <typename Make>
std::shared_ptr<const Prepared> prepared(const Key& key, Make make, std::string& error) {
  static std::mutex mutex;
  static std::unordered_map<Key, std::shared_ptr<const Prepared>, KeyHash> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  std::shared_ptr<const Prepared> made;
  try {
    made = std::make_shared<const Prepared>(make());
  } catch (const dnnl::error& e) {
    error = std::string("oneDNN: ") + e.what();
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(mutex);
  return cache.emplace(key, made).first->second;
}

enum Kind : int64_t {
  kMatmul = 1, kConv = 2, kToBfloat16 = 3, kBatchMatmul = 4, kInt8Matmul = 5, kInt8Conv = 6, kInt8BatchMatmul = 7
};

inline constexpr char kWeights[] = "weights";
using WeightsAttr = ffi::Attr<int32_t, kWeights>;  // the packed weight's type: 0 float32, 1 bfloat16

// The operands' element type: 0 float32, 1 bfloat16 (the bias and the result stay float32).
dt operand_type(int32_t code) { return code == 1 ? dt::bf16 : dt::f32; }

// [M, K] x [K, N] (+ bias [N]) -> activation -> [M, N], all row-major.
std::shared_ptr<const Prepared> matmul(int64_t M, int64_t K, int64_t N, bool bias, int32_t activation,
                                       int32_t type, std::string& error) {
  return prepared(Key{kMatmul, M, K, N, bias, activation, type}, [&] {
    dnnl::post_ops ops;
    if (!append_activation(ops, activation)) throw dnnl::error(dnnl_invalid_arguments, "unknown activation");
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    const dnnl::memory::desc src({M, K}, operand_type(type), tag::ab), weights({K, N}, operand_type(type), tag::any),
        bias_md = bias ? dnnl::memory::desc({1, N}, dt::f32, tag::ab) : dnnl::memory::desc(),
        dst({M, N}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd(cpu_engine(), src, weights, bias_md, dst, attr);
    return Prepared{dnnl::matmul(pd), src, pd.weights_desc(), bias_md, dst, pd.impl_info_str()};
  }, error);
}

// [B, M, K] x [B, K, N] -> [B, M, N], float32, row-major: a product of two activations
// (attention's scores and weighted sum), so both operands come with the call.
std::shared_ptr<const Prepared> batch_matmul(int64_t B, int64_t M, int64_t K, int64_t N, std::string& error) {
  return prepared(Key{kBatchMatmul, B, M, K, N}, [&] {
    const dnnl::memory::desc src({B, M, K}, dt::f32, tag::abc), weights({B, K, N}, dt::f32, tag::abc),
        dst({B, M, N}, dt::f32, tag::abc);
    dnnl::matmul::primitive_desc pd(cpu_engine(), src, weights, dst);
    return Prepared{dnnl::matmul(pd), src, weights, {}, dst, pd.impl_info_str()};
  }, error);
}

// The geometry of a 2-D convolution (NHWC in and out, groups of channels).
struct ConvShape {
  int64_t n, h, w, c, o, kh, kw, sh, sw, dh, dw, pad_top, pad_left, oh, ow, groups;

  static bool read(Ints in, Ints geometry, ConvShape& s) {
    if (in.size() != 4 || geometry.size() != 12) return false;
    s = {in[0], in[1], in[2], in[3], geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5],
         geometry[6], geometry[7], geometry[8], geometry[9], geometry[10], geometry[11]};
    return s.groups >= 1 && s.c % s.groups == 0 && s.o % s.groups == 0 && s.sh >= 1 && s.sw >= 1 && s.dh >= 1 &&
           s.dw >= 1 && s.pad_top >= 0 && s.pad_left >= 0 && pad_bottom(s) >= 0 && pad_right(s) >= 0;
  }
  static int64_t pad_bottom(const ConvShape& s) { return (s.oh - 1) * s.sh + (s.kh - 1) * s.dh + 1 - s.h - s.pad_top; }
  static int64_t pad_right(const ConvShape& s) { return (s.ow - 1) * s.sw + (s.kw - 1) * s.dw + 1 - s.w - s.pad_left; }
  // One sample with its padding made part of it (the convolution then pads nothing).
  ConvShape padded_sample() const {
    ConvShape s = *this;
    s.n = 1;
    s.h += pad_top + pad_bottom(*this);
    s.w += pad_left + pad_right(*this);
    s.pad_top = s.pad_left = 0;
    return s;
  }
  // The weight as oneDNN names it: [O, C, KH, KW], or [G, O/G, C/G, KH, KW] for groups.
  dnnl::memory::dims weight_dims() const {
    if (groups == 1) return {o, c, kh, kw};
    return {groups, o / groups, c / groups, kh, kw};
  }
};

std::shared_ptr<const Prepared> conv(const ConvShape& s, bool bias, int32_t activation, int32_t type,
                                     std::string& error) {
  return prepared(Key{kConv, s.n, s.h, s.w, s.c, s.o, s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.pad_top, s.pad_left,
                      s.oh, s.ow, s.groups, bias, activation, type}, [&] {
    dnnl::post_ops ops;
    if (!append_activation(ops, activation)) throw dnnl::error(dnnl_invalid_arguments, "unknown activation");
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    const dnnl::memory::desc src({s.n, s.c, s.h, s.w}, operand_type(type), tag::nhwc),
        weights(s.weight_dims(), operand_type(type), tag::any),
        bias_md = bias ? dnnl::memory::desc({s.o}, dt::f32, tag::a) : dnnl::memory::desc(),
        dst({s.n, s.o, s.oh, s.ow}, dt::f32, tag::nhwc);
    dnnl::convolution_forward::primitive_desc pd(
        cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src, weights, bias_md,
        dst, {s.sh, s.sw}, {s.dh - 1, s.dw - 1}, {s.pad_top, s.pad_left},
        {ConvShape::pad_bottom(s), ConvShape::pad_right(s)}, attr);
    return Prepared{dnnl::convolution_forward(pd), src, pd.weights_desc(), bias_md, dst, pd.impl_info_str()};
  }, error);
}

// float32 -> bfloat16 (round to nearest even) of `count` values: a reorder, JIT-made once per size.
std::shared_ptr<const Prepared> to_bfloat16(int64_t count, std::string& error) {
  return prepared(Key{kToBfloat16, count}, [&] {
    const dnnl::memory::desc from({count}, dt::f32, tag::a), to({count}, dt::bf16, tag::a);
    dnnl::reorder::primitive_desc pd(cpu_engine(), from, cpu_engine(), to);
    return Prepared{dnnl::reorder(pd), from, {}, {}, to, pd.impl_info_str()};
  }, error);
}

// The memory objects of one primitive's call, made once per thread and pointed at each
// call's buffers (making them costs more than a small matmul's arithmetic).
struct CallMemories {
  dnnl::memory src, weights, bias, dst;
  std::unordered_map<int, dnnl::memory> args;
};

CallMemories& memories_of(const Prepared& p) {
  thread_local std::unordered_map<const Prepared*, CallMemories> cache;
  auto it = cache.find(&p);
  if (it != cache.end()) return it->second;
  CallMemories m;
  const auto bind = [&m](int arg, const dnnl::memory::desc& desc, dnnl::memory& memory) {
    if (desc.is_zero()) return;
    memory = dnnl::memory(desc, cpu_engine(), nullptr);
    m.args.emplace(arg, memory);
  };
  bind(DNNL_ARG_SRC, p.src, m.src);
  bind(DNNL_ARG_WEIGHTS, p.weights, m.weights);
  bind(DNNL_ARG_BIAS, p.bias, m.bias);
  bind(DNNL_ARG_DST, p.dst, m.dst);
  for (const auto& [arg, desc] : p.extra) {
    dnnl::memory memory;
    bind(arg, desc, memory);
  }
  return cache.emplace(&p, std::move(m)).first->second;
}

// Runs the primitive on a float32 `src`, rounded to bfloat16 first where the primitive takes that.
ffi::Error run(const Prepared& p, void* src, void* weights, void* bias, void* dst) {
  try {
    dnnl::stream& stream = thread_stream();
    thread_local std::vector<uint16_t> rounded;
    if (p.src.get_data_type() == dt::bf16) {
      std::string error;
      const int64_t count = static_cast<int64_t>(p.src.get_size() / sizeof(uint16_t));
      auto convert = to_bfloat16(count, error);
      if (convert == nullptr) return ffi::Error::Internal(error);
      rounded.resize(count);
      CallMemories& c = memories_of(*convert);
      c.src.set_data_handle(src);
      c.dst.set_data_handle(rounded.data());
      convert->primitive.execute(stream, c.args);  // a reorder's FROM and TO are SRC and DST
      src = rounded.data();
    }
    CallMemories& m = memories_of(p);
    m.src.set_data_handle(src);
    m.weights.set_data_handle(weights);
    m.dst.set_data_handle(dst);
    if (bias != nullptr) m.bias.set_data_handle(bias);
    p.primitive.execute(stream, m.args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

// Reorders a plain row-major weight into the primitive's layout.
const char* pack(const Prepared& p, const dnnl::memory::desc& plain, const void* weight, void* out, int64_t bytes) {
  static thread_local std::string error;
  if (static_cast<int64_t>(p.weights.get_size()) != bytes) return "the packed weight has another size";
  try {
    dnnl::engine& engine = cpu_engine();
    dnnl::memory from(plain, engine, const_cast<void*>(weight)), to(p.weights, engine, out);
    dnnl::stream& stream = thread_stream();
    dnnl::reorder(from, to).execute(stream, from, to);
    stream.wait();
  } catch (const dnnl::error& e) {
    error = std::string("oneDNN: ") + e.what();
    return error.c_str();
  }
  return nullptr;
}

// Records the primitive's packed-weight size and implementation for the Python side.
const char* describe_prepared(const std::shared_ptr<const Prepared>& p, const std::string& error, int64_t* bytes) {
  static thread_local std::string text;
  if (p == nullptr) {
    *bytes = -1;
    text = error;
  } else {
    *bytes = static_cast<int64_t>(p->weights.get_size());
    text = p->implementation;
  }
  return text.c_str();
}


// ---- int8: the `cpu-onednn-int8` target (oneDNN's AMX kernels) ----

// How an int8 primitive reads and writes: kStatic / kStaticToInt8 take int8 codes of one
// calibrated scale (folded into the per-column scales) and give float32 / int8 requantized
// by a runtime output scale, the epilogue fused by oneDNN; kDynamic takes codes quantized
// per row with a scale and a zero point each (quantize_rows) and gives the int32 products,
// which jaxlite's own epilogue rescales (oneDNN's per-row post-ops -- a [1, M, 1] multiply
// and a prefilled sum -- ran the product at half speed).
enum Int8Mode : int32_t { kStatic = 0, kStaticToInt8 = 1, kDynamic = 2 };

const int kWeightScaleArg = DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS;
const int kDstScaleArg = DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST;

dnnl::memory::desc vector_of(int64_t n, dt type = dt::f32) { return dnnl::memory::desc({n}, type, tag::a); }

}  // namespace
}  // namespace jaxlite

// libgomp's, resolved through libdnnl (weak: absent, the calls are skipped)
extern "C" void omp_set_num_threads(int) __attribute__((weak));
extern "C" int omp_get_max_threads() __attribute__((weak));

namespace jaxlite {
namespace {

// An int8 primitive runs on the calling thread's OpenMP team of one: its calls take tens of
// microseconds, and a team of two, started from XLA's threads (several at once where the
// graph has independent ops), made whole models slower on two cores than on one (ResNet-18
// int8 3.6 against 2.9 ms, the transformer 3.7 against 2.3); float primitives, which run for
// milliseconds, keep the whole team. oneDNN divides a primitive's work for the threads it has
// when the primitive is made, so int8 primitives are made on one thread too.
struct OneThread {
  int previous = omp_get_max_threads != nullptr ? omp_get_max_threads() : 0;
  OneThread() {
    if (omp_set_num_threads != nullptr) omp_set_num_threads(1);
  }
  ~OneThread() {
    if (omp_set_num_threads != nullptr && previous > 0) omp_set_num_threads(previous);
  }
};

// [M, K] int8 x [K, N] int8 -> [M, N] in `mode`.
std::shared_ptr<const Prepared> int8_matmul(int64_t M, int64_t K, int64_t N, bool bias, int32_t activation,
                                            int32_t mode, std::string& error) {
  return prepared(Key{kInt8Matmul, M, K, N, bias, activation, mode}, [&] {
    OneThread one_thread;
    if (mode < kStatic || mode > kDynamic) throw dnnl::error(dnnl_invalid_arguments, "unknown int8 mode");
    dnnl::post_ops ops;
    dnnl::primitive_attr attr;
    Prepared p;
    if (mode == kDynamic) {  // int32 products: the epilogue is jaxlite's (dynamic_epilogue)
      p.src = dnnl::memory::desc({M, K}, dt::s8, tag::ab);
      p.weights = dnnl::memory::desc({K, N}, dt::s8, tag::any);
      p.dst = dnnl::memory::desc({M, N}, dt::s32, tag::ab);
      dnnl::matmul::primitive_desc pd(cpu_engine(), p.src, p.weights, p.dst);
      p.primitive = dnnl::matmul(pd);
      p.weights = pd.weights_desc();
      p.implementation = pd.impl_info_str();
      return p;
    } else {
      p.src = dnnl::memory::desc({M, K}, dt::s8, tag::ab);
      p.weights = dnnl::memory::desc({K, N}, dt::s8, tag::any);
      p.dst = dnnl::memory::desc({M, N}, mode == kStaticToInt8 ? dt::s8 : dt::f32, tag::ab);
      if (bias) p.bias = dnnl::memory::desc({1, N}, dt::f32, tag::ab);
      attr.set_scales_mask(DNNL_ARG_WEIGHTS, 1 << 1);
    }
    if (!append_activation(ops, activation)) throw dnnl::error(dnnl_invalid_arguments, "unknown activation");
    p.extra.emplace_back(kWeightScaleArg, vector_of(N));
    if (mode == kStaticToInt8) {
      attr.set_scales_mask(DNNL_ARG_DST, 0);
      p.extra.emplace_back(kDstScaleArg, vector_of(1));
    }
    attr.set_post_ops(ops);
    dnnl::matmul::primitive_desc pd(cpu_engine(), p.src, p.weights, p.bias, p.dst, attr);
    p.primitive = dnnl::matmul(pd);
    p.weights = pd.weights_desc();
    p.implementation = pd.impl_info_str();
    return p;
  }, error);
}

// An int8 NHWC convolution in `mode`. kDynamic runs once per sample on its codes padded by
// the kernel with the sample's zero point (the border reads as 0): without padding in the
// primitive the zero point's correction, zero x the weight's sums, is one value per channel,
// folded into the bias with the sample's scale -- a plain int8 convolution, which oneDNN runs
// on its fastest kernels (with a runtime source zero point it chose slower ones, up to 2x).
std::shared_ptr<const Prepared> int8_conv(ConvShape s, bool bias, int32_t activation, int32_t mode,
                                          std::string& error) {
  if (mode == kDynamic) {
    s = s.padded_sample();
    bias = true;
  }
  return prepared(Key{kInt8Conv, s.n, s.h, s.w, s.c, s.o, s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.pad_top, s.pad_left,
                      s.oh, s.ow, s.groups, bias, activation, mode}, [&] {
    OneThread one_thread;
    if (mode < kStatic || mode > kDynamic) throw dnnl::error(dnnl_invalid_arguments, "unknown int8 mode");
    dnnl::post_ops ops;
    if (!append_activation(ops, activation)) throw dnnl::error(dnnl_invalid_arguments, "unknown activation");
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    Prepared p;
    p.src = dnnl::memory::desc({s.n, s.c, s.h, s.w}, dt::s8, tag::nhwc);
    p.weights = dnnl::memory::desc(s.weight_dims(), dt::s8, tag::any);
    if (bias) p.bias = vector_of(s.o);
    p.dst = dnnl::memory::desc({s.n, s.o, s.oh, s.ow}, mode == kStaticToInt8 ? dt::s8 : dt::f32, tag::nhwc);
    attr.set_scales_mask(DNNL_ARG_WEIGHTS, s.groups == 1 ? 1 : 3);
    p.extra.emplace_back(kWeightScaleArg, vector_of(s.o));
    if (mode == kStaticToInt8) {
      attr.set_scales_mask(DNNL_ARG_DST, 0);
      p.extra.emplace_back(kDstScaleArg, vector_of(1));
    }
    dnnl::convolution_forward::primitive_desc pd(
        cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, p.src, p.weights,
        p.bias, p.dst, {s.sh, s.sw}, {s.dh - 1, s.dw - 1}, {s.pad_top, s.pad_left},
        {ConvShape::pad_bottom(s), ConvShape::pad_right(s)}, attr);
    p.primitive = dnnl::convolution_forward(pd);
    p.weights = pd.weights_desc();
    p.implementation = pd.impl_info_str();
    return p;
  }, error);
}

// [B, M, K] x [B, K, N] int8 -> int32 [B, M, N]: a product of two activations quantized per
// row (attention's), the right side's codes stored [B, N, K] (read transposed).
std::shared_ptr<const Prepared> int8_batch_matmul(int64_t B, int64_t M, int64_t K, int64_t N, std::string& error) {
  return prepared(Key{kInt8BatchMatmul, B, M, K, N}, [&] {
    OneThread one_thread;
    Prepared p;
    p.src = dnnl::memory::desc({B, M, K}, dt::s8, tag::abc);
    p.weights = dnnl::memory::desc({B, K, N}, dt::s8, tag::acb);
    p.dst = dnnl::memory::desc({B, M, N}, dt::s32, tag::abc);
    dnnl::matmul::primitive_desc pd(cpu_engine(), p.src, p.weights, p.dst);
    p.primitive = dnnl::matmul(pd);
    p.implementation = pd.impl_info_str();
    return p;
  }, error);
}

// Runs `p` on the buffers given by execution argument (every one the primitive takes; nullptr:
// one it may not), on one thread.
ffi::Error execute(const Prepared& p, std::initializer_list<std::pair<int, const void*>> buffers) {
  OneThread one_thread;
  try {
    CallMemories& m = memories_of(p);
    for (const auto& [arg, data] : buffers) {
      auto it = m.args.find(arg);
      if (it == m.args.end()) {
        if (data == nullptr) continue;  // an optional argument this primitive was made without
        return ffi::Error::Internal("oneDNN: an argument the primitive does not take");
      }
      it->second.set_data_handle(const_cast<void*>(data));
    }
    dnnl::stream& stream = thread_stream();
    p.primitive.execute(stream, m.args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

constexpr char kNanCode = static_cast<char>(0x80);  // int8 -128: a non-finite value (dialects/int8.py)

bool holds_nan_code(const int8_t* codes, int64_t count) { return std::memchr(codes, kNanCode, count) != nullptr; }

// Writes NaN (float32) or NaN's code (int8) over `count` results from `index` on.
void poison(void* out, bool int8_out, int64_t index, int64_t count) {
  if (int8_out)
    std::memset(static_cast<int8_t*>(out) + index, kNanCode, count);
  else
    std::fill_n(static_cast<float*>(out) + index, count, std::numeric_limits<float>::quiet_NaN());
}

AVX512_BEGIN

// The dynamic matmul's epilogue over its int32 products acc [M, N], row by row, four vectors
// of 16 columns at a time. The Epilogue is a local copy (its fields stay in registers: the
// stores through its `out` cannot change them) with the activation a constant (no switch per
// vector): the loop is the epilogue's arithmetic, which the out-of-order core overlaps.
template <int32_t Activation>
void epilogue_rows(const int32_t* acc, int64_t M, int64_t N, Epilogue e) {
  e.activation = Activation;
  const int64_t full = N / 64 * 64;
  for (int64_t m = 0; m < M; ++m) {
    const int32_t* row = acc + m * N;
    int64_t n = 0;
    for (; n < full; n += 64)
      for (int64_t j = 0; j < 64; j += 16) e(m, n + j, _mm512_loadu_si512(row + n + j), __mmask16(0xFFFF));
    for (; n < N; n += 16) {
      const __mmask16 mask = tail_mask(N - n);
      e(m, n, _mm512_maskz_loadu_epi32(mask, row + n), mask);
    }
  }
}

void epilogue_block(const int32_t* acc, int64_t M, int64_t N, const Epilogue& e) {
  switch (e.activation) {
    case kRelu: return epilogue_rows<kRelu>(acc, M, N, e);
    case kRelu6: return epilogue_rows<kRelu6>(acc, M, N, e);
    case kSigmoid: return epilogue_rows<kSigmoid>(acc, M, N, e);
    case kTanh: return epilogue_rows<kTanh>(acc, M, N, e);
    case kSilu: return epilogue_rows<kSilu>(acc, M, N, e);
    case kGeluTanh: return epilogue_rows<kGeluTanh>(acc, M, N, e);
    case kGeluErf: return epilogue_rows<kGeluErf>(acc, M, N, e);
    default: return epilogue_rows<kNone>(acc, M, N, e);
  }
}

// The epilogue of every row, blocks of rows split over the pool's threads where it has several.
template <typename Pool>
void dynamic_epilogue(Pool& pool, const int32_t* acc, int64_t M, int64_t N, const Epilogue& e) {
  const int64_t threads = std::min<int64_t>({usable_threads(pool), M, M * N / (1 << 15)});
  const int64_t blocks = threads <= 1 ? 1 : std::min<int64_t>(M, 4 * threads);
  parallel_for(pool, threads, blocks, [=, &e](int64_t b) {
    const int64_t m0 = M * b / blocks, m1 = M * (b + 1) / blocks;
    epilogue_block(acc + m0 * N, m1 - m0, N, e.from_row(m0));
  });
}

// Float rows (`stride` floats apart) -> int8 codes [rows, K], quantized per row as
// quantize_rows does (asymmetric; a row with NaN/Inf gets a NaN scale), with each row's
// scale, zero point and code sum.
void asymmetric_codes(const float* x, int64_t rows, int64_t K, int64_t stride, int8_t* codes, float* scale,
                      int32_t* zero, int32_t* sums) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * stride;
    int8_t* q = codes + r * K;
    asymmetric_params(row, K, scale[r], zero[r]);
    asymmetric_copy(reinterpret_cast<uint8_t*>(q), row, K, 1.0f / scale[r], zero[r], 0);
    int32_t sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += q[k];
    sums[r] = sum;
  }
}

// float32 -> the int8 codes of one calibrated scale (dialects/int8.py quantize: NaN/Inf give
// NaN's code), as the native kernels quantize an input they read. True where x holds a NaN or
// an Inf (so its codes hold NaN's).
bool quantize_codes(const float* x, int64_t count, float scale, int8_t* codes) {
  const bool nonfinite =  // code + 128
      quantize_copy(reinterpret_cast<uint8_t*>(codes), x, count, _mm512_set1_ps(1.0f / scale));
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t i = 0; i < count; i += 64) {
    const __mmask64 mask = count - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (count - i)) - 1;
    _mm512_mask_storeu_epi8(codes + i, mask, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, codes + i), flip));
  }
  return nonfinite;
}

// oneDNN saturates requantized results to [-128, 127]; jaxlite's codes stop at -127 (-128
// stands for NaN).
void clamp_codes(int8_t* codes, int64_t count) {
  const __m512i lowest = _mm512_set1_epi8(-127);
  for (int64_t i = 0; i < count; i += 64) {
    const __mmask64 mask = count - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (count - i)) - 1;
    _mm512_mask_storeu_epi8(codes + i, mask, _mm512_max_epi8(_mm512_maskz_loadu_epi8(mask, codes + i), lowest));
  }
}

AVX512_END

// NaN's code in a convolution's input makes every output position whose window reads it
// NaN (all channels: as the native kernels do), sample by sample.
void poison_conv_windows(const ConvShape& s, const int8_t* x, void* out, bool int8_out) {
  const int64_t sample = s.h * s.w * s.c;
  std::vector<uint8_t> flagged;
  for (int64_t b = 0; b < s.n; ++b) {
    const int8_t* xb = x + b * sample;
    if (!holds_nan_code(xb, sample)) continue;
    flagged.assign(s.h * s.w, 0);
    for (int64_t i = 0; i < s.h * s.w; ++i) flagged[i] = holds_nan_code(xb + i * s.c, s.c);
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t ow = 0; ow < s.ow; ++ow) {
        bool reads = false;
        for (int64_t kh = 0; kh < s.kh && !reads; ++kh) {
          const int64_t ih = oh * s.sh - s.pad_top + kh * s.dh;
          if (ih < 0 || ih >= s.h) continue;
          for (int64_t kw = 0; kw < s.kw && !reads; ++kw) {
            const int64_t iw = ow * s.sw - s.pad_left + kw * s.dw;
            reads = iw >= 0 && iw < s.w && flagged[ih * s.w + iw];
          }
        }
        if (reads) poison(out, int8_out, ((b * s.oh + oh) * s.ow + ow) * s.o, s.o);
      }
  }
}

}  // namespace

// a [M, K] times the packed weight (float32 or bfloat16), + bias [N] (or none), activation:
// out [M, N], all float32.
template <typename Pool>
ffi::Error OnednnMatmul(Pool, ffi::Buffer<ffi::F32> a, ffi::AnyBuffer packed, ffi::Buffer<ffi::F32> bias,
                        ffi::ResultBuffer<ffi::F32> out, ActivationAttr activation, WeightsAttr weights) {
  const int32_t type = *weights;
  if (type != 0 && type != 1) return ffi::Error::InvalidArgument("jaxlite_onednn_matmul: weights 0 or 1");
  const auto ad = a.dimensions(), od = out->dimensions();
  if (ad.size() != 2 || od.size() != 2 || ad[0] != od[0])
    return ffi::Error::InvalidArgument("jaxlite_onednn_matmul takes a [M, K] and gives [M, N]");
  const int64_t M = ad[0], K = ad[1], N = od[1];
  const bool has_bias = bias.element_count() != 0;
  if (has_bias && static_cast<int64_t>(bias.element_count()) != N)
    return ffi::Error::InvalidArgument("jaxlite_onednn_matmul: the bias has N values or none");
  std::string error;
  auto p = matmul(M, K, N, has_bias, *activation, type, error);
  if (p == nullptr) return ffi::Error::InvalidArgument(error);
  if (packed.size_bytes() != p->weights.get_size())
    return ffi::Error::InvalidArgument("jaxlite_onednn_matmul: the packed weight was made for another shape");
  return run(*p, a.typed_data(), packed.untyped_data(), has_bias ? bias.typed_data() : nullptr, out->typed_data());
}

// a [B, M, K] x b [B, K, N] -> out [B, M, N], float32 (both operands activations).
template <typename Pool>
ffi::Error OnednnBatchMatmul(Pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                             ffi::ResultBuffer<ffi::F32> out) {
  const auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 3 || bd.size() != 3 || od.size() != 3 || bd[0] != ad[0] || bd[1] != ad[2] || od[0] != ad[0] ||
      od[1] != ad[1] || od[2] != bd[2])
    return ffi::Error::InvalidArgument("jaxlite_onednn_batch_matmul takes [B, M, K], [B, K, N] and gives [B, M, N]");
  std::string error;
  auto p = batch_matmul(ad[0], ad[1], ad[2], bd[2], error);
  if (p == nullptr) return ffi::Error::InvalidArgument(error);
  return run(*p, a.typed_data(), b.typed_data(), nullptr, out->typed_data());
}

// A 2-D convolution of x [N, H, W, C] by the packed weight, + bias [O] (or none),
// activation: out [N, OH, OW, O], float32 but for the weight. geometry: O, KH, KW, strides (2), dilations (2), padding
// before (2), OH, OW, groups.
template <typename Pool>
ffi::Error OnednnConv(Pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer packed, ffi::Buffer<ffi::F32> bias,
                      ffi::ResultBuffer<ffi::F32> out, ActivationAttr activation, IntsAttr<kSizes> geometry,
                      WeightsAttr weights) {
  const int32_t type = *weights;
  if (type != 0 && type != 1) return ffi::Error::InvalidArgument("jaxlite_onednn_conv: weights 0 or 1");
  ConvShape s;
  const auto xd = x.dimensions();
  if (!ConvShape::read(Ints(xd.begin(), xd.size()), *geometry, s))
    return ffi::Error::InvalidArgument("jaxlite_onednn_conv takes [N, H, W, C] and a 12-value geometry");
  if (out->element_count() != static_cast<size_t>(s.n * s.oh * s.ow * s.o))
    return ffi::Error::InvalidArgument("jaxlite_onednn_conv: the result is not [N, OH, OW, O]");
  const bool has_bias = bias.element_count() != 0;
  if (has_bias && static_cast<int64_t>(bias.element_count()) != s.o)
    return ffi::Error::InvalidArgument("jaxlite_onednn_conv: the bias has O values or none");
  std::string error;
  auto p = conv(s, has_bias, *activation, type, error);
  if (p == nullptr) return ffi::Error::InvalidArgument(error);
  if (packed.size_bytes() != p->weights.get_size())
    return ffi::Error::InvalidArgument("jaxlite_onednn_conv: the packed weight was made for another shape");
  return run(*p, x.typed_data(), packed.untyped_data(), has_bias ? bias.typed_data() : nullptr, out->typed_data());
}

// int8 codes a [M, K] times the packed int8 weight. Static (no row_scale): out =
// activation(acc * col_scale[n] + bias[n]), float32 [M, N], or int8 requantized by
// out_scale (round(y / out_scale), clamped to +-127); a float32 a is quantized first with
// x_scale (one value; empty for int8 a), as the native kernels read a calibrated input. Dynamic (row_scale, row_zero [M] of
// quantize_rows): out = activation((acc - row_zero[m] * colsum[n]) * row_scale[m] *
// col_scale[n] + bias[n]), float32. Rows holding NaN's code give NaN (its code).
template <typename Pool>
ffi::Error OnednnInt8Matmul(Pool pool, ffi::AnyBuffer a, ffi::AnyBuffer packed, ffi::Buffer<ffi::S32> colsum,
                            ffi::Buffer<ffi::F32> row_scale, ffi::Buffer<ffi::S32> row_zero,
                            ffi::Buffer<ffi::F32> col_scale, ffi::Buffer<ffi::F32> bias,
                            ffi::Buffer<ffi::F32> out_scale, ffi::Buffer<ffi::F32> x_scale,
                            ffi::Result<ffi::AnyBuffer> out, ActivationAttr activation) {
  const auto ad = a.dimensions(), od = out->dimensions();
  if (ad.size() != 2 || od.size() != 2 || ad[0] != od[0])
    return ffi::Error::InvalidArgument("jaxlite_onednn_int8_matmul takes a [M, K] and gives [M, N]");
  const int64_t M = ad[0], K = ad[1], N = od[1];
  const bool dynamic = row_scale.element_count() != 0, requantize = out_scale.element_count() != 0;
  const bool float_in = a.element_type() == ffi::DataType::F32, int8_out = out->element_type() == ffi::DataType::S8;
  const auto count = [](const auto& buffer) { return static_cast<int64_t>(buffer.element_count()); };
  if (int8_out != requantize || (!int8_out && out->element_type() != ffi::DataType::F32) ||
      (!float_in && a.element_type() != ffi::DataType::S8) || float_in != (count(x_scale) == 1) ||
      (float_in && !(x_scale.typed_data()[0] > 0.0f)) || count(col_scale) != N ||
      (count(bias) != 0 && count(bias) != N) || (requantize && count(out_scale) != 1) ||
      (dynamic && (float_in || requantize || count(row_scale) != M || count(row_zero) != M || count(colsum) != N)))
    return ffi::Error::InvalidArgument("jaxlite_onednn_int8_matmul: operand sizes do not match [M, K] x [K, N]");
  const int8_t* codes = static_cast<const int8_t*>(a.untyped_data());
  bool nan_code = false;  // (int8 codes are scanned after the product, float input while quantized)
  if (float_in) {  // a calibrated input quantized here: codes of x_scale (NaN/Inf: NaN's code)
    thread_local std::vector<int8_t> quantized;
    if (static_cast<int64_t>(quantized.size()) < M * K) quantized.resize(M * K);
    nan_code = quantize_codes(static_cast<const float*>(a.untyped_data()), M * K, x_scale.typed_data()[0],
                              quantized.data());
    codes = quantized.data();
  }
  const int32_t mode = dynamic ? kDynamic : requantize ? kStaticToInt8 : kStatic;
  const bool has_bias = count(bias) != 0;
  std::string error;
  auto p = int8_matmul(M, K, N, has_bias, *activation, mode, error);
  if (p == nullptr) return ffi::Error::InvalidArgument(error);
  if (packed.size_bytes() != p->weights.get_size())
    return ffi::Error::InvalidArgument("jaxlite_onednn_int8_matmul: the packed weight was made for another shape");
  void* y = out->untyped_data();
  if (dynamic) {  // a NaN row's scale is NaN, and so its results
    thread_local std::vector<int32_t> products, zeros;
    if (static_cast<int64_t>(products.size()) < M * N) products.resize(M * N);  // grows only: no refill per call
    ffi::Error status = execute(*p, {{DNNL_ARG_SRC, codes}, {DNNL_ARG_WEIGHTS, packed.untyped_data()},
                                     {DNNL_ARG_DST, products.data()}});
    if (!status.success()) return status;
    zeros.resize(M);  // the epilogue subtracts (128 + zero) x colsum (its own codes are offset by 128)
    for (int64_t m = 0; m < M; ++m) zeros[m] = row_zero.typed_data()[m] - 128;
    dynamic_epilogue(pool, products.data(), M, N,
                     Epilogue{colsum.typed_data(), row_scale.typed_data(), col_scale.typed_data(),
                              has_bias ? bias.typed_data() : nullptr, *activation, 0.0f, y, N, zeros.data()});
    return ffi::Error::Success();
  }
  ffi::Error status = execute(*p, {{DNNL_ARG_SRC, codes}, {DNNL_ARG_WEIGHTS, packed.untyped_data()},
                                   {DNNL_ARG_BIAS, has_bias ? bias.typed_data() : nullptr}, {DNNL_ARG_DST, y},
                                   {kWeightScaleArg, col_scale.typed_data()},
                                   {kDstScaleArg, requantize ? out_scale.typed_data() : nullptr}});
  if (!status.success()) return status;
  if (int8_out) clamp_codes(static_cast<int8_t*>(y), M * N);
  if (float_in ? nan_code : holds_nan_code(codes, M * K))
    for (int64_t m = 0; m < M; ++m)
      if (holds_nan_code(codes + m * K, K)) poison(y, int8_out, m * N, N);
  return ffi::Error::Success();
}

// An int8 NHWC convolution of x [N, H, W, C] by the packed weight, geometry as OnednnConv's.
// Static (no sample_scale): out = activation(acc * col_scale[o] + bias[o]), float32 or
// requantized by out_scale; output positions whose window reads NaN's code give NaN (its
// code). Dynamic (sample_scale, sample_zero [N]: each sample quantize_rows' row; colsum [O]:
// the weight's sums per output channel): out = activation((acc - zero * window sums) *
// scale * col_scale[o] + bias[o]), the border reading as the zero point (0), float32; a
// sample with a NaN scale (a NaN or an Inf in it) gives NaN.
template <typename Pool>
ffi::Error OnednnInt8Conv(Pool, ffi::Buffer<ffi::S8> x, ffi::AnyBuffer packed, ffi::Buffer<ffi::S32> colsum,
                          ffi::Buffer<ffi::F32> sample_scale, ffi::Buffer<ffi::S32> sample_zero,
                          ffi::Buffer<ffi::F32> col_scale, ffi::Buffer<ffi::F32> bias,
                          ffi::Buffer<ffi::F32> out_scale, ffi::Result<ffi::AnyBuffer> out, ActivationAttr activation,
                          IntsAttr<kSizes> geometry) {
  ConvShape s;
  const auto xd = x.dimensions();
  if (!ConvShape::read(Ints(xd.begin(), xd.size()), *geometry, s))
    return ffi::Error::InvalidArgument("jaxlite_onednn_int8_conv takes [N, H, W, C] and a 12-value geometry");
  const bool dynamic = sample_scale.element_count() != 0, requantize = out_scale.element_count() != 0;
  const bool int8_out = out->element_type() == ffi::DataType::S8;
  const auto count = [](const auto& buffer) { return static_cast<int64_t>(buffer.element_count()); };
  if (count(*out) != s.n * s.oh * s.ow * s.o || int8_out != requantize ||
      (!int8_out && out->element_type() != ffi::DataType::F32) || count(col_scale) != s.o ||
      (count(bias) != 0 && count(bias) != s.o) || (requantize && count(out_scale) != 1) ||
      (dynamic && (requantize || count(sample_scale) != s.n || count(sample_zero) != s.n || count(colsum) != s.o)))
    return ffi::Error::InvalidArgument("jaxlite_onednn_int8_conv: operand sizes do not match the geometry");
  const int32_t mode = dynamic ? kDynamic : requantize ? kStaticToInt8 : kStatic;
  const bool has_bias = count(bias) != 0;
  std::string error;
  auto p = int8_conv(s, has_bias, *activation, mode, error);
  if (p == nullptr) return ffi::Error::InvalidArgument(error);
  if (packed.size_bytes() != p->weights.get_size())
    return ffi::Error::InvalidArgument("jaxlite_onednn_int8_conv: the packed weight was made for another shape");
  const void* b = has_bias ? bias.typed_data() : nullptr;
  if (dynamic) {
    const ConvShape q = s.padded_sample();
    const int64_t in_sample = s.h * s.w * s.c, out_sample = s.oh * s.ow * s.o, row = s.w * s.c;
    thread_local std::vector<int8_t> padded;
    thread_local std::vector<float> scales, biases;
    if (static_cast<int64_t>(padded.size()) < q.h * q.w * q.c) padded.resize(q.h * q.w * q.c);
    scales.resize(s.o);
    biases.resize(s.o);
    for (int64_t i = 0; i < s.n; ++i) {
      float* y = static_cast<float*>(out->untyped_data()) + i * out_sample;
      const float scale = sample_scale.typed_data()[i];
      const int32_t zero = sample_zero.typed_data()[i];
      if (!std::isfinite(scale)) {  // a NaN or an Inf in the sample
        poison(y, false, 0, out_sample);
        continue;
      }
      std::memset(padded.data(), zero, q.h * q.w * q.c);
      for (int64_t h = 0; h < s.h; ++h)
        std::memcpy(padded.data() + ((h + s.pad_top) * q.w + s.pad_left) * s.c, x.typed_data() + i * in_sample + h * row,
                    row);
      for (int64_t o = 0; o < s.o; ++o) {
        scales[o] = scale * col_scale.typed_data()[o];
        biases[o] = (has_bias ? bias.typed_data()[o] : 0.0f) -
                    static_cast<float>(zero) * scales[o] * static_cast<float>(colsum.typed_data()[o]);
      }
      ffi::Error status = execute(*p, {{DNNL_ARG_SRC, padded.data()}, {DNNL_ARG_WEIGHTS, packed.untyped_data()},
                                       {DNNL_ARG_BIAS, biases.data()}, {DNNL_ARG_DST, y},
                                       {kWeightScaleArg, scales.data()}});
      if (!status.success()) return status;
    }
    return ffi::Error::Success();
  }
  ffi::Error status = execute(*p, {{DNNL_ARG_SRC, x.typed_data()}, {DNNL_ARG_WEIGHTS, packed.untyped_data()},
                                   {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, out->untyped_data()},
                                   {kWeightScaleArg, col_scale.typed_data()},
                                   {kDstScaleArg, requantize ? out_scale.typed_data() : nullptr}});
  if (!status.success()) return status;
  if (int8_out) clamp_codes(static_cast<int8_t*>(out->untyped_data()), count(*out));
  if (holds_nan_code(x.typed_data(), count(x))) poison_conv_windows(s, x.typed_data(), out->untyped_data(), int8_out);
  return ffi::Error::Success();
}

// float32 [B, M, N] = a [B, M, K] x b [B, N, K]^T with both sides' rows quantized on the fly
// (asymmetric, one scale and zero point per row of each), the native DynamicActGemm's
// semantics and results: the int8 products on oneDNN, acc = sum (a - a_zero)(b - b_zero)
// and the rescale in jaxlite's epilogue. a and b are read through sizes (B, M, N, K) and
// strides (a's batch and row stride, b's, in elements; K contiguous).
template <typename Pool>
ffi::Error OnednnInt8ActMatmul(Pool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                               ffi::ResultBuffer<ffi::F32> out, IntsAttr<kSizes> sizes_attr,
                               IntsAttr<kStrides> strides_attr) {
  ActProduct shape;
  if (!shape.read(*sizes_attr, *strides_attr, a.element_count(), b.element_count(), out->element_count()))
    return ffi::Error::InvalidArgument(
        "jaxlite_onednn_int8_act_matmul: sizes [B, M, N, K] and strides [4] that fit the operands");
  const int64_t batches = shape.batches, M = shape.M, N = shape.N, K = shape.K;
  const int64_t a_batch = shape.a_batch, a_row = shape.a_row, b_batch = shape.b_batch, b_row = shape.b_row;
  std::string error;
  auto p = int8_batch_matmul(batches, M, K, N, error);
  if (p == nullptr) return ffi::Error::InvalidArgument(error);
  thread_local std::vector<int8_t> a_codes, b_codes;
  thread_local std::vector<int32_t> products, a_zero, b_zero, a_sums, b_sums;
  thread_local std::vector<float> a_scale, b_scale;
  const auto grow = [](auto& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  };
  grow(a_codes, batches * M * K), grow(b_codes, batches * N * K), grow(products, batches * M * N);
  grow(a_zero, batches * M), grow(a_sums, batches * M), grow(a_scale, batches * M);
  grow(b_zero, batches * N), grow(b_sums, batches * N), grow(b_scale, batches * N);
  for (int64_t i = 0; i < batches; ++i) {
    asymmetric_codes(a.typed_data() + i * a_batch, M, K, a_row, a_codes.data() + i * M * K, a_scale.data() + i * M,
                     a_zero.data() + i * M, a_sums.data() + i * M);
    asymmetric_codes(b.typed_data() + i * b_batch, N, K, b_row, b_codes.data() + i * N * K, b_scale.data() + i * N,
                     b_zero.data() + i * N, b_sums.data() + i * N);
  }
  ffi::Error status = execute(*p, {{DNNL_ARG_SRC, a_codes.data()}, {DNNL_ARG_WEIGHTS, b_codes.data()},
                                   {DNNL_ARG_DST, products.data()}});
  if (!status.success()) return status;
  for (int64_t i = 0; i < batches * M; ++i) {  // the epilogue's forms: (128 + zero) and sum (a - a_zero)
    a_sums[i] -= K * a_zero[i];
    a_zero[i] -= 128;
  }
  for (int64_t i = 0; i < batches; ++i) {
    Epilogue e{b_sums.data() + i * N, a_scale.data() + i * M, b_scale.data() + i * N, nullptr, kNone, 0.0f,
               out->typed_data() + i * M * N, N, a_zero.data() + i * M};
    e.col_zero = b_zero.data() + i * N;
    e.row_sums = a_sums.data() + i * M;
    dynamic_epilogue(pool, products.data() + i * M * N, M, N, e);
  }
  return ffi::Error::Success();
}

}  // namespace jaxlite

JAXLITE_EXPORT(OnednnMatmul)
JAXLITE_EXPORT(OnednnConv)
JAXLITE_EXPORT(OnednnBatchMatmul)
JAXLITE_EXPORT(OnednnInt8Matmul)
JAXLITE_EXPORT(OnednnInt8Conv)
JAXLITE_EXPORT(OnednnInt8ActMatmul)

// Load-time entry points (ctypes): the primitive's implementation (its name, e.g.
// "brg:avx512_core", or the error) and packed-weight size in *bytes (-1 on error), and the
// reorder of a plain weight of the operand type -- [K, N] for a matmul, [O, C/G, KH, KW] for a
// convolution -- into `out` (nullptr on success, else the error). type: 0 float32, 1 bfloat16.
JAXLITE_API const char* JaxliteOnednnMatmulInfo(int64_t M, int64_t K, int64_t N, int32_t bias, int32_t activation,
                                                int32_t type, int64_t* bytes) {
  std::string error;
  return jaxlite::describe_prepared(jaxlite::matmul(M, K, N, bias != 0, activation, type, error), error, bytes);
}

JAXLITE_API const char* JaxliteOnednnBatchMatmulInfo(int64_t B, int64_t M, int64_t K, int64_t N, int64_t* bytes) {
  std::string error;
  return jaxlite::describe_prepared(jaxlite::batch_matmul(B, M, K, N, error), error, bytes);
}

JAXLITE_API const char* JaxliteOnednnMatmulPack(int64_t M, int64_t K, int64_t N, int32_t bias, int32_t activation,
                                                int32_t type, const void* weight, void* out, int64_t bytes) {
  std::string error;
  auto p = jaxlite::matmul(M, K, N, bias != 0, activation, type, error);
  if (p == nullptr) return "oneDNN refused the matmul";
  return jaxlite::pack(*p, dnnl::memory::desc({K, N}, jaxlite::operand_type(type), jaxlite::tag::ab), weight, out,
                       bytes);
}

JAXLITE_API const char* JaxliteOnednnConvInfo(const int64_t* in, const int64_t* geometry, int32_t bias,
                                              int32_t activation, int32_t type, int64_t* bytes) {
  jaxlite::ConvShape s;
  std::string error = "jaxlite_onednn_conv: invalid geometry";
  if (!jaxlite::ConvShape::read(jaxlite::Ints(in, 4), jaxlite::Ints(geometry, 12), s))
    return jaxlite::describe_prepared(nullptr, error, bytes);
  return jaxlite::describe_prepared(jaxlite::conv(s, bias != 0, activation, type, error), error, bytes);
}

JAXLITE_API const char* JaxliteOnednnConvPack(const int64_t* in, const int64_t* geometry, int32_t bias,
                                              int32_t activation, int32_t type, const void* weight, void* out,
                                              int64_t bytes) {
  jaxlite::ConvShape s;
  std::string error;
  if (!jaxlite::ConvShape::read(jaxlite::Ints(in, 4), jaxlite::Ints(geometry, 12), s)) return "invalid geometry";
  auto p = jaxlite::conv(s, bias != 0, activation, type, error);
  if (p == nullptr) return "oneDNN refused the convolution";
  return jaxlite::pack(*p, dnnl::memory::desc(s.weight_dims(), jaxlite::operand_type(type),
                                              s.groups == 1 ? jaxlite::tag::oihw : jaxlite::tag::goihw),
                       weight, out, bytes);
}

// The int8 primitives' (mode: 0 static, 1 static requantized to int8, 2 dynamic)
// implementation and packed size, and the reorder of a plain int8 weight -- [K, N] or
// [O, C/G, KH, KW] -- into their layout.
JAXLITE_API const char* JaxliteOnednnInt8MatmulInfo(int64_t M, int64_t K, int64_t N, int32_t bias, int32_t activation,
                                                    int32_t mode, int64_t* bytes) {
  std::string error;
  return jaxlite::describe_prepared(jaxlite::int8_matmul(M, K, N, bias != 0, activation, mode, error), error, bytes);
}

JAXLITE_API const char* JaxliteOnednnInt8MatmulPack(int64_t M, int64_t K, int64_t N, int32_t bias, int32_t activation,
                                                    int32_t mode, const void* weight, void* out, int64_t bytes) {
  std::string error;
  auto p = jaxlite::int8_matmul(M, K, N, bias != 0, activation, mode, error);
  if (p == nullptr) return "oneDNN refused the int8 matmul";
  return jaxlite::pack(*p, dnnl::memory::desc({K, N}, jaxlite::dt::s8, jaxlite::tag::ab), weight, out, bytes);
}

JAXLITE_API const char* JaxliteOnednnInt8ConvInfo(const int64_t* in, const int64_t* geometry, int32_t bias,
                                                  int32_t activation, int32_t mode, int64_t* bytes) {
  jaxlite::ConvShape s;
  std::string error = "jaxlite_onednn_int8_conv: invalid geometry";
  if (!jaxlite::ConvShape::read(jaxlite::Ints(in, 4), jaxlite::Ints(geometry, 12), s))
    return jaxlite::describe_prepared(nullptr, error, bytes);
  return jaxlite::describe_prepared(jaxlite::int8_conv(s, bias != 0, activation, mode, error), error, bytes);
}

JAXLITE_API const char* JaxliteOnednnInt8ConvPack(const int64_t* in, const int64_t* geometry, int32_t bias,
                                                  int32_t activation, int32_t mode, const void* weight, void* out,
                                                  int64_t bytes) {
  jaxlite::ConvShape s;
  std::string error;
  if (!jaxlite::ConvShape::read(jaxlite::Ints(in, 4), jaxlite::Ints(geometry, 12), s)) return "invalid geometry";
  auto p = jaxlite::int8_conv(s, bias != 0, activation, mode, error);
  if (p == nullptr) return "oneDNN refused the int8 convolution";
  return jaxlite::pack(*p, dnnl::memory::desc(s.weight_dims(), jaxlite::dt::s8,
                                              s.groups == 1 ? jaxlite::tag::oihw : jaxlite::tag::goihw),
                       weight, out, bytes);
}

JAXLITE_API const char* JaxliteOnednnInt8BatchMatmulInfo(int64_t B, int64_t M, int64_t K, int64_t N, int64_t* bytes) {
  std::string error;
  return jaxlite::describe_prepared(jaxlite::int8_batch_matmul(B, M, K, N, error), error, bytes);
}
