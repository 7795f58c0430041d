// Dense layers and convolutions on oneDNN (the `cpu-onednn` target), in float32 or in
// bfloat16 (a bfloat16 weight; the float32 input is rounded to bfloat16 in the call,
// accumulation, bias and result stay float32): one primitive
// per shape, made once and kept, with the bias and the activation fused into it; the weight
// is reordered into the primitive's own layout once, when the model is placed
// (JaxliteOnednn*Pack), so a call only wraps the buffers and runs it. oneDNN chooses its
// kernel from what the CPU has (AMX, AVX-512, AVX2) by itself.
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "bindings.h"
#include "oneapi/dnnl/dnnl.hpp"

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

enum Kind : int64_t { kMatmul = 1, kConv = 2, kToBfloat16 = 3, kBatchMatmul = 4 };

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

}  // namespace jaxlite

JAXLITE_EXPORT(OnednnMatmul)
JAXLITE_EXPORT(OnednnConv)
JAXLITE_EXPORT(OnednnBatchMatmul)

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
