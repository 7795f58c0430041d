// A whole program of direct calls (JaxliteDirect<Name>, bindings.h) in one call from
// Python: one ctypes crossing, not one per kernel. Steps run in order until one fails.
#include <cstdint>

#include "common.h"

extern "C" {

typedef const char* (*DirectFn)(int64_t, void* const*, const int32_t*, const int64_t*, const int64_t*,
                                const int64_t*, int64_t, const float*, int64_t);

struct DirectStep {
  DirectFn fn;
  int64_t count;
  void* const* data;
  const int32_t* dtypes;
  const int64_t* ranks;
  const int64_t* dims;
  const int64_t* iattr;
  int64_t n_iattr;
  const float* fattr;
  int64_t n_fattr;
};

__attribute__((visibility("default"))) const char* JaxliteDirectRun(const DirectStep* steps, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const DirectStep& s = steps[i];
    if (const char* error = s.fn(s.count, s.data, s.dtypes, s.ranks, s.dims, s.iattr, s.n_iattr, s.fattr, s.n_fattr))
      return error;
  }
  return nullptr;
}

// The activations of the GEMM epilogues, by code (jaxlite::Activation), comma-separated.
__attribute__((visibility("default"))) const char* JaxliteActivations() { return jaxlite::kActivationNames; }

}  // extern "C"
