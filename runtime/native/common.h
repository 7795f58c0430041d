// What every jaxlite CPU kernel shares: the FFI types, the attribute names (the kernels'
// signatures are their only description: bindings.h derives both the XLA FFI handler and
// the direct host call from them), activations, per-thread scratch and the thread helpers
// that split work over XLA's intra-op pool (or run it inline on the caller's thread).
#pragma once

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX2__) && !defined(__AVX512F__)
#include "avx512_on_avx2.h"  // the AVX2 build of the kernels
#endif

namespace jaxlite {

namespace ffi = xla::ffi;

// Attribute names, as the Python side passes them to jax.ffi.ffi_call.
inline constexpr char kActivation[] = "activation";
inline constexpr char kWindow[] = "window";
inline constexpr char kStrides[] = "strides";
inline constexpr char kDilation[] = "dilation";
inline constexpr char kPaddingLow[] = "padding_low";
inline constexpr char kOutSize[] = "out_size";
inline constexpr char kSizes[] = "sizes";
inline constexpr char kEpsilon[] = "epsilon";

using Ints = ffi::Span<const int64_t>;
template <const char* Name>
using IntsAttr = ffi::Attr<Ints, Name>;
using ActivationAttr = ffi::Attr<int32_t, kActivation>;

enum Activation : int32_t {
  kNone = 0, kRelu = 1, kRelu6 = 2, kSigmoid = 3, kTanh = 4, kSilu = 5, kGeluTanh = 6, kGeluErf = 7, kLast = kGeluErf
};
// Their names in code order, as dialects/fused.py spells them (read by runtime/native_calls.py).
inline constexpr char kActivationNames[] = "none,relu,relu6,sigmoid,tanh,silu,gelu_tanh,gelu_erf";
constexpr int count_names(const char* s) { return *s == 0 ? 1 : (*s == ',') + count_names(s + 1); }
static_assert(count_names(kActivationNames) == kLast + 1, "one name per activation");

// The operands of a product of two activations, a [B, M, K] x b [B, N, K]^T read in place
// through sizes (B, M, N, K) and strides (a's batch and row stride, b's, in elements; K
// contiguous): read() is false where they do not fit the buffers (out: B * M * N values).
struct ActProduct {
  int64_t batches, M, N, K, a_batch, a_row, b_batch, b_row;

  bool read(Ints sizes, Ints strides, int64_t a_elements, int64_t b_elements, int64_t out_elements) {
    if (sizes.size() != 4 || strides.size() != 4) return false;
    *this = {sizes[0], sizes[1], sizes[2], sizes[3], strides[0], strides[1], strides[2], strides[3]};
    const auto fits = [this](int64_t elements, int64_t b_stride, int64_t rows, int64_t r_stride) {
      return b_stride >= 0 && r_stride >= K && (batches - 1) * b_stride + (rows - 1) * r_stride + K <= elements;
    };
    return batches >= 1 && M >= 1 && N >= 1 && K >= 1 && fits(a_elements, a_batch, M, a_row) &&
           fits(b_elements, b_batch, N, b_row) && out_elements == batches * M * N;
  }
};

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// Scratch buffers per thread (slot 0: the GEMM's A rows, slot 1: a padded conv input or a
// packed right-hand side, slot 2: A's rows widened for the AVX2 tiles), reused across
// calls: no page faults on every call.
inline uint8_t* scratch(size_t bytes, int slot = 0) {
  thread_local std::vector<uint8_t> buffers[3];
  if (buffers[slot].size() < bytes) buffers[slot].resize(bytes);
  return buffers[slot].data();
}

// Runs work on the caller's thread only (parallel_for never schedules with one thread):
// the pool of the direct host calls (runtime/host_plan.py).
struct InlinePool {
  int64_t num_threads() const { return 1; }
  template <typename F>
  void Schedule(F&&) {}
};

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
inline void wait_until(const std::atomic<int64_t>& done, int64_t target) {
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

// Runs fn(m0, m1, g0, g1) over a grid of row blocks [m0, m1) of M and chunks [g0, g1) of
// `groups` column groups on `threads` threads: a few chunks per thread (for balance), split
// by columns first, by rows only up to max_row_blocks.
template <typename Pool, typename F>
void parallel_grid(Pool& pool, int64_t threads, int64_t M, int64_t groups, int64_t max_row_blocks, F fn) {
  const int64_t col_chunks = std::min<int64_t>(groups, 4 * threads);
  const int64_t row_chunks = std::min<int64_t>(max_row_blocks, (4 * threads + col_chunks - 1) / col_chunks);
  parallel_for(pool, threads, col_chunks * row_chunks, [=](int64_t c) {
    const int64_t rc = c / col_chunks, cc = c % col_chunks;
    fn(M * rc / row_chunks, M * (rc + 1) / row_chunks, groups * cc / col_chunks, groups * (cc + 1) / col_chunks);
  });
}

}  // namespace jaxlite
