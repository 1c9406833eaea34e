// What the CPU kernel extensions (_cpu.cpp, _sparse_train.cpp) share: the parallel loop over
// work items, the work below which one thread is faster, and the cast of a Python integer
// (a tensor's data_ptr) to a typed pointer.
#pragma once

#include <atomic>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#define SST_INLINE inline __attribute__((always_inline))

namespace {

// Runs fn(a, begin, end) over [0, n) on up to `threads` threads. The range is cut into about
// 8 chunks per thread, claimed in order from a shared counter: a thread the OS schedules late
// (a busy machine) finds the work done by the others instead of holding its static share, so
// the region costs at most its wake-up, not its share of the work on top.
template <typename Args, typename Fn>
void run_parallel(Fn fn, const Args& a, int64_t n, int threads) {
#ifdef _OPENMP
  if (threads > 1 && n > 1) {
    const int64_t chunks = n < 8 * threads ? n : 8 * threads;
    std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(threads)
    {
      for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1))
        fn(a, n * c / chunks, n * (c + 1) / chunks);
    }
    return;
  }
#endif
  (void)threads;
  if (n > 0) fn(a, 0, n);
}

// Below this many multiply-adds a second thread costs more than it saves.
constexpr int64_t kSerialWork = 32768;

template <typename T>
T* ptr(unsigned long long p) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

}  // namespace
