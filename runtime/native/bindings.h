// One description per kernel: its C++ signature. JAXLITE_EXPORT(Name) makes from the
// kernel template Name<Pool> (first parameter: the thread pool; then buffers, results and
// ffi::Attr<T, name> attributes, in the order the Python side passes them):
//
//   JaxliteName           the XLA FFI handler (bound automatically from the signature);
//   JaxliteDirectName     the same kernel called without XLA on the caller's thread, its
//                         operands and results described by plain arrays (host_plan.py):
//                         buffers in order, int attributes flattened into `iattr` (a span
//                         as its length, then its values), float ones into `fattr`;
//   JaxliteSignatureName  the signature as text, e.g. "in:s8;in:f32;out:any;i32:activation",
//                         which runtime/native_calls.py reads to build its ffi_calls and
//                         direct calls -- so Python and C++ cannot drift apart.
#pragma once

#include <string>
#include <tuple>
#include <type_traits>

#include "common.h"

namespace xla::ffi {
// The intra-op thread pool as a context parameter of automatically bound handlers.
template <>
struct CtxBinding<ThreadPool> {
  using Ctx = ThreadPool;
};
}  // namespace xla::ffi

namespace jaxlite {

constexpr int64_t kMaxDirectBuffers = 12;

// The operands, results and attributes of one direct call, handed out in signature order.
class DirectCall {
 public:
  DirectCall(int64_t count, void* const* data, const int32_t* dtypes, const int64_t* ranks, const int64_t* dims,
             const int64_t* iattr, int64_t n_iattr, const float* fattr, int64_t n_fattr)
      : count_(count), iattr_(iattr), n_iattr_(n_iattr), fattr_(fattr), n_fattr_(n_fattr) {
    ok_ = count >= 0 && count <= kMaxDirectBuffers && n_iattr >= 0 && n_fattr >= 0;
    for (int64_t i = 0, offset = 0; ok_ && i < count; offset += ranks[i], ++i) {
      ok_ = ranks[i] >= 0;
      buffers_[i] = XLA_FFI_Buffer{XLA_FFI_Buffer_STRUCT_SIZE, nullptr, static_cast<XLA_FFI_DataType>(dtypes[i]),
                                   data[i], ranks[i], const_cast<int64_t*>(dims + offset)};
    }
    if (!ok_) count_ = 0;  // hand out nothing
  }

  // Every operand and attribute consumed, each of the declared type.
  bool ok() const { return ok_ && next_buffer_ == count_ && next_i_ == n_iattr_ && next_f_ == n_fattr_; }

  // The next buffer; `dtype` < 0 accepts any element type.
  const XLA_FFI_Buffer* buffer(int32_t dtype) {
    if (next_buffer_ >= count_) return fail();
    const XLA_FFI_Buffer* b = &buffers_[next_buffer_++];
    if (dtype >= 0 && b->dtype != static_cast<XLA_FFI_DataType>(dtype)) return fail();
    return b;
  }
  int64_t next_int() {
    if (next_i_ >= n_iattr_) return fail(), 0;
    return iattr_[next_i_++];
  }
  float next_float() {
    if (next_f_ >= n_fattr_) return fail(), 0.0f;
    return fattr_[next_f_++];
  }
  Ints next_ints() {
    const int64_t n = next_int();
    if (n < 0 || next_i_ + n > n_iattr_) return fail(), Ints{};
    Ints span{iattr_ + next_i_, static_cast<size_t>(n)};
    next_i_ += n;
    return span;
  }

 private:
  const XLA_FFI_Buffer* fail() {
    ok_ = false;
    return &empty_;
  }

  int64_t count_;
  const int64_t* iattr_;
  int64_t n_iattr_;
  const float* fattr_;
  int64_t n_fattr_;
  bool ok_;
  int64_t next_buffer_ = 0, next_i_ = 0, next_f_ = 0;
  XLA_FFI_Buffer buffers_[kMaxDirectBuffers];
  XLA_FFI_Buffer empty_{XLA_FFI_Buffer_STRUCT_SIZE, nullptr, XLA_FFI_DataType_INVALID, nullptr, 0, nullptr};
};

constexpr const char* dtype_name(ffi::DataType dtype) {
  switch (dtype) {
    case ffi::DataType::S8: return "s8";
    case ffi::DataType::S32: return "s32";
    case ffi::DataType::F32: return "f32";
    default: return "?";
  }
}

// How one kernel parameter is read from a direct call, and how it is described.
template <typename T>
struct Param;

template <ffi::DataType D>
struct Param<ffi::Buffer<D>> {
  static ffi::Buffer<D> read(DirectCall& c) { return ffi::Buffer<D>(c.buffer(static_cast<int32_t>(D))); }
  static std::string describe() { return std::string("in:") + dtype_name(D); }
};
template <>
struct Param<ffi::AnyBuffer> {
  static ffi::AnyBuffer read(DirectCall& c) { return ffi::AnyBuffer(c.buffer(-1)); }
  static std::string describe() { return "in:any"; }
};
template <ffi::DataType D>
struct Param<ffi::Result<ffi::Buffer<D>>> {
  static ffi::Result<ffi::Buffer<D>> read(DirectCall& c) {
    return ffi::Buffer<D>(c.buffer(static_cast<int32_t>(D)));
  }
  static std::string describe() { return std::string("out:") + dtype_name(D); }
};
template <>
struct Param<ffi::Result<ffi::AnyBuffer>> {
  static ffi::Result<ffi::AnyBuffer> read(DirectCall& c) { return ffi::AnyBuffer(c.buffer(-1)); }
  static std::string describe() { return "out:any"; }
};
template <const char* Name>
struct Param<ffi::Attr<int32_t, Name>> {
  static ffi::Attr<int32_t, Name> read(DirectCall& c) { return static_cast<int32_t>(c.next_int()); }
  static std::string describe() { return std::string("i32:") + Name; }
};
template <const char* Name>
struct Param<ffi::Attr<float, Name>> {
  static ffi::Attr<float, Name> read(DirectCall& c) { return c.next_float(); }
  static std::string describe() { return std::string("f32:") + Name; }
};
template <const char* Name>
struct Param<ffi::Attr<Ints, Name>> {
  static ffi::Attr<Ints, Name> read(DirectCall& c) { return c.next_ints(); }
  static std::string describe() { return std::string("i64s:") + Name; }
};

inline const char* error_message(const ffi::Error& error) {
  if (error.success()) return nullptr;
  thread_local std::string text;
  text = error.message();
  return text.c_str();
}

inline constexpr char kWrongOperands[] = "jaxlite direct call: operands or attributes do not match the kernel";

template <typename T>
struct IsResult : std::false_type {};
template <typename T>
struct IsResult<ffi::Result<T>> : std::true_type {};
template <typename T>
struct IsAttr : std::false_type {};
template <typename T, const char* Name>
struct IsAttr<ffi::Attr<T, Name>> : std::true_type {};

// Operands, then results, then attributes: the order of a direct call's arrays.
template <typename... Params>
constexpr bool in_call_order() {
  constexpr int kind[] = {0, (IsAttr<Params>::value ? 3 : IsResult<Params>::value ? 2 : 1)...};
  for (size_t i = 1; i < sizeof(kind) / sizeof(int); ++i)
    if (kind[i] < kind[i - 1]) return false;
  return true;
}

template <typename... Params>
const char* run_direct(ffi::Error (*kernel)(InlinePool, Params...), DirectCall& call) {
  static_assert(in_call_order<Params...>(), "a kernel takes its operands, then results, then attributes");
  std::tuple<Params...> args{Param<Params>::read(call)...};  // braces: read in order
  if (!call.ok()) return kWrongOperands;
  return error_message(std::apply([kernel](auto&... a) { return kernel(InlinePool{}, a...); }, args));
}

template <typename... Params>
std::string describe(ffi::Error (*)(InlinePool, Params...)) {
  std::string text;
  ((text += (text.empty() ? "" : ";") + Param<Params>::describe()), ...);
  return text;
}

}  // namespace jaxlite

// The library's entry points: the only symbols it exports (built with -fvisibility=hidden).
#define JAXLITE_API extern "C" __attribute__((visibility("default")))

#define JAXLITE_EXPORT(Name)                                                                                    \
  JAXLITE_API XLA_FFI_Error* Jaxlite##Name(XLA_FFI_CallFrame* call_frame);                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(Jaxlite##Name, jaxlite::Name<xla::ffi::ThreadPool>);                            \
  JAXLITE_API const char* JaxliteDirect##Name(int64_t count, void* const* data, const int32_t* dtypes,          \
                                              const int64_t* ranks, const int64_t* dims, const int64_t* iattr,  \
                                              int64_t n_iattr, const float* fattr, int64_t n_fattr) {           \
    jaxlite::DirectCall call(count, data, dtypes, ranks, dims, iattr, n_iattr, fattr, n_fattr);                 \
    return jaxlite::run_direct(&jaxlite::Name<jaxlite::InlinePool>, call);                                      \
  }                                                                                                             \
  JAXLITE_API const char* JaxliteSignature##Name() {                                                            \
    static const std::string text = jaxlite::describe(&jaxlite::Name<jaxlite::InlinePool>);                     \
    return text.c_str();                                                                                        \
  }
