// Sparse training kernels for the CPU (sparse_train.py): the three products of a masked
// layer's training step over its kept weights only, in fp32 or fp64.
//
// The layer's kept positions are a compressed sparse structure: for each of n_rows rows r,
// entries p in [ptr[r], ptr[r + 1]) hold a column idx[p] and value V[p]. Row-major CSR
// (rows = outputs) gives the forward product and the weight gradient; the transposed
// structure (CSC: rows = inputs, values gathered into its order once per backward) gives the
// input gradient. A constant fan-in layer is the CSR case with equal row lengths. Dense operands are "column-major" batches: X (cols, N) with the
// batch along the contiguous axis (a transposed activation, or one image's unfolded columns),
// so that every kept weight touches a contiguous run of N numbers:
//
//   spmm:  Y[r, l] = b[r] + sum_p V[p] X[idx[p], l]        (forward; input gradient)
//   sddmm: D[p]    = sum_l G[r, l] X[idx[p], l]            (weight gradient at kept (r, i))
//
// summed over images for a batch of images (conv). spmm is vectorised along l (one broadcast
// weight and a few FMAs per weight); sddmm takes eight entries of a row at a time (eight
// independent FMA chains over the whole length N) and reduces the eight accumulators with one
// shuffle tree. Both prefetch the X rows of the entries kPrefetch ahead (random rows: the
// hardware prefetcher cannot guess them).
//
// Vectors are GCC vector extensions: the same templates compile to AVX-512, AVX2 or
// the baseline ISA, chosen once at import (runtime dispatch). The parallel regions are OpenMP;
// on Linux the extension binds to the libgomp.so.1 that torch has loaded, so both share one
// thread pool.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kernel_common.h"

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define SST_X86 1
#define SST_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma,prefer-vector-width=512")))
#define SST_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace {

typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
typedef double v2d __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));

// Entries ahead whose X row's first cache line is prefetched (measured: 16 gains 10-25% on
// the spmm products at 90% sparsity; more lines per row gain nothing).
constexpr int64_t kPrefetch = 16;

struct SpmmArgs {
  const int32_t* ptr;   // (n_rows + 1)
  const int32_t* idx;   // (nnz) column of each entry
  const void* values;   // (nnz)
  const void* bias;     // (n_rows) or null
  const void* x;        // per image (cols, ldx)
  int64_t ldx, x_img;
  void* y;  // y[img * y_img + row * y_row + l * y_col]
  int64_t y_img, y_row, y_col;
  int64_t n, n_img, n_rows;  // N columns per image
  int64_t chunk, n_chunks;   // columns per work item (cache blocking of X)
};

struct SddmmArgs {
  const int32_t* ptr;
  const int32_t* idx;
  const void* g;  // per image (n_rows, ldg)
  int64_t ldg, g_img;
  const void* x;  // per image (cols, ldx)
  int64_t ldx, x_img;
  void* out;  // (nnz) in CSR order
  int64_t n, n_img, n_rows;
};

template <typename V>
SST_INLINE V load_v(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
SST_INLINE void store_v(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// ------------------------------------------------------------------------------ spmm
// One tile of NV vectors along l for one row: U weights run into separate accumulators so
// that at least eight FMAs are independent (an FMA's latency is about four times its
// throughput, two per cycle).
template <typename T, typename V, int NV>
SST_INLINE void spmm_tile(const SpmmArgs& a, const T* x, int64_t p0, int64_t p1, T b, T* y) {
  constexpr int W = sizeof(V) / sizeof(T);
  constexpr int U = NV >= 8 ? 1 : 8 / NV;
  const T* vals = static_cast<const T*>(a.values);
  V acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int t = 0; t < NV; ++t) acc[u][t] = V{} + (u == 0 ? b : T(0));
  int64_t p = p0;
  for (; p + U <= p1; p += U) {
    if (p + kPrefetch + U <= p1)
      for (int u = 0; u < U; ++u)
        __builtin_prefetch(x + static_cast<int64_t>(a.idx[p + kPrefetch + u]) * a.ldx);
    for (int u = 0; u < U; ++u) {
      const T w = vals[p + u];
      const T* xr = x + static_cast<int64_t>(a.idx[p + u]) * a.ldx;
      for (int t = 0; t < NV; ++t) acc[u][t] += w * load_v<V>(xr + t * W);
    }
  }
  for (; p < p1; ++p) {
    const T w = vals[p];
    const T* xr = x + static_cast<int64_t>(a.idx[p]) * a.ldx;
    for (int t = 0; t < NV; ++t) acc[0][t] += w * load_v<V>(xr + t * W);
  }
  for (int u = 1; u < U; ++u)
    for (int t = 0; t < NV; ++t) acc[0][t] += acc[u][t];
  for (int t = 0; t < NV; ++t) store_v(y + t * W, acc[0][t]);
}

template <typename T>
SST_INLINE void spmm_scalar(const SpmmArgs& a, const T* x, int64_t p0, int64_t p1, T b, T* y,
                            int64_t n) {
  const T* vals = static_cast<const T*>(a.values);
  for (int64_t l = 0; l < n; ++l) {
    T acc = b;
    for (int64_t p = p0; p < p1; ++p)
      acc += vals[p] * x[static_cast<int64_t>(a.idx[p]) * a.ldx + l];
    y[l] = acc;
  }
}

// Columns [l0, l1) of row r of one image, stored contiguously from y (column l at y[l - l0]).
template <typename T, typename V>
SST_INLINE void spmm_segment(const SpmmArgs& a, const T* x, T* y, int64_t r, int64_t l0,
                             int64_t l1) {
  constexpr int W = sizeof(V) / sizeof(T);
  const int64_t p0 = a.ptr[r], p1 = a.ptr[r + 1];
  const T b = a.bias ? static_cast<const T*>(a.bias)[r] : T(0);
  int64_t l = l0;
  for (; l + 8 * W <= l1; l += 8 * W) spmm_tile<T, V, 8>(a, x + l, p0, p1, b, y + (l - l0));
  if (l + 4 * W <= l1) {
    spmm_tile<T, V, 4>(a, x + l, p0, p1, b, y + (l - l0));
    l += 4 * W;
  }
  if (l + 2 * W <= l1) {
    spmm_tile<T, V, 2>(a, x + l, p0, p1, b, y + (l - l0));
    l += 2 * W;
  }
  if (l + W <= l1) {
    spmm_tile<T, V, 1>(a, x + l, p0, p1, b, y + (l - l0));
    l += W;
  }
  if (l < l1) spmm_scalar<T>(a, x + l, p0, p1, b, y + (l - l0), l1 - l);
}

// A transposed output (y_col > 1) in groups of kGroup rows: each row's columns go to a
// contiguous scratch row, then every column gets its kGroup numbers as one contiguous run.
// Storing each row's columns straight into y writes one number per cache line, with lines
// y_col apart; at y_col = 1024 floats (4 KB) they all fall in one L1 set (measured 1.6x
// slower than the same product with contiguous rows).
constexpr int64_t kGroup = 8, kGroupCols = 64;

template <typename T, typename V>
SST_INLINE void spmm_rows_transposed(const SpmmArgs& a, const T* x, T* y, int64_t r0,
                                     int64_t r1, int64_t l0, int64_t l1) {
  alignas(64) T buf[kGroup][kGroupCols];
  for (int64_t g0 = r0; g0 < r1; g0 += kGroup) {
    const int64_t g1 = g0 + kGroup < r1 ? g0 + kGroup : r1;
    for (int64_t c0 = l0; c0 < l1; c0 += kGroupCols) {
      const int64_t c1 = c0 + kGroupCols < l1 ? c0 + kGroupCols : l1;
      for (int64_t r = g0; r < g1; ++r) spmm_segment<T, V>(a, x, buf[r - g0], r, c0, c1);
      for (int64_t l = c0; l < c1; ++l) {
        T* out = y + l * a.y_col + g0 * a.y_row;
        for (int64_t r = g0; r < g1; ++r) out[(r - g0) * a.y_row] = buf[r - g0][l - c0];
      }
    }
  }
}

// Work item = (image, column chunk, row), row fastest: a thread's contiguous range of items
// stays on few chunks, so their columns of X stay in its cache.
template <typename T, typename V>
SST_INLINE void spmm_items(const SpmmArgs& a, int64_t i0, int64_t i1) {
  for (int64_t item = i0; item < i1;) {
    const int64_t r = item % a.n_rows;
    const int64_t chunk = (item / a.n_rows) % a.n_chunks;
    const int64_t img = item / (a.n_rows * a.n_chunks);
    const int64_t l0 = chunk * a.chunk;
    const int64_t l1 = l0 + a.chunk < a.n ? l0 + a.chunk : a.n;
    const T* x = static_cast<const T*>(a.x) + img * a.x_img;
    T* y = static_cast<T*>(a.y) + img * a.y_img;
    const int64_t r_end = r + (i1 - item) < a.n_rows ? r + (i1 - item) : a.n_rows;
    if (a.y_col == 1)
      for (int64_t rr = r; rr < r_end; ++rr)
        spmm_segment<T, V>(a, x, y + rr * a.y_row + l0, rr, l0, l1);
    else
      spmm_rows_transposed<T, V>(a, x, y, r, r_end, l0, l1);
    item += r_end - r;
  }
}

// ------------------------------------------------------------------------------ sddmm
SST_INLINE v4f halves(const v8f& a) {
  return __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
}

SST_INLINE v8f halves(const v16f& a) {
  return __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
}

// s[u] = sum of the lanes of a[u], u < 8.
template <typename T, typename V>
SST_INLINE void reduce8(const V* a, T* s) {
  constexpr int W = sizeof(V) / sizeof(T);
  for (int u = 0; u < 8; ++u) {
    T r = 0;
    for (int i = 0; i < W; ++i) r += a[u][i];
    s[u] = r;
  }
}

// Three levels of pairwise shuffles and adds (14 shuffles, 7 adds) instead of 8 x 7 lane adds.
template <>
SST_INLINE void reduce8<float, v8f>(const v8f* a, float* s) {
  v8f b[4], c[2];
  for (int i = 0; i < 4; ++i)  // b[i] lanes: pair sums of a[2i] and a[2i + 1], interleaved
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int i = 0; i < 2; ++i)  // c[i] = sums of 4: a[4i..4i+3] over lanes 0-3, then 4-7
    c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  store_v(s, __builtin_shufflevector(c[0], c[1], 0, 1, 2, 3, 8, 9, 10, 11) +
                 __builtin_shufflevector(c[0], c[1], 4, 5, 6, 7, 12, 13, 14, 15));
}

template <>
SST_INLINE void reduce8<float, v16f>(const v16f* a, float* s) {
  v8f h[8];
  for (int u = 0; u < 8; ++u) h[u] = halves(a[u]);
  reduce8<float, v8f>(h, s);
}

// out[p..p+7] += s[0..7] as one vector: s was just stored as one vector, and scalar reloads
// of its parts would wait on store-to-load forwarding.
SST_INLINE void add8(float* out, const float* s) {
  store_v(out, load_v<v8f>(out) + load_v<v8f>(s));
}

SST_INLINE void add8(double* out, const double* s) {
  store_v(out, load_v<v4d>(out) + load_v<v4d>(s));
  store_v(out + 4, load_v<v4d>(out + 4) + load_v<v4d>(s + 4));
}

// out[p] += sum_l g[l] X[idx[p], l] for the entries [p0, p1) of one row, over the first
// nv * W columns: eight entries at a time (eight independent FMA chains), each over the
// whole row, then one reduction of the eight; g's row stays in L1.
template <typename T, typename V>
SST_INLINE void sddmm_row(const SddmmArgs& a, const T* g, const T* x, int64_t p0, int64_t p1,
                          T* out) {
  constexpr int W = sizeof(V) / sizeof(T);
  const int64_t nv = a.n / W;
  int64_t p = p0;
  for (; p + 8 <= p1; p += 8) {
    const T* xs[8];
    for (int u = 0; u < 8; ++u) xs[u] = x + static_cast<int64_t>(a.idx[p + u]) * a.ldx;
    if (p + kPrefetch + 8 <= p1)
      for (int u = 0; u < 8; ++u)
        __builtin_prefetch(x + static_cast<int64_t>(a.idx[p + kPrefetch + u]) * a.ldx);
    V c[8];
    for (int u = 0; u < 8; ++u) c[u] = V{};
    for (int64_t t = 0; t < nv; ++t) {
      const V gv = load_v<V>(g + t * W);
      for (int u = 0; u < 8; ++u) c[u] += gv * load_v<V>(xs[u] + t * W);
    }
    alignas(64) T s[8];
    reduce8<T, V>(c, s);
    add8(out + p, s);
  }
  for (; p < p1; ++p) {
    const T* xr = x + static_cast<int64_t>(a.idx[p]) * a.ldx;
    V c = V{};
    for (int64_t t = 0; t < nv; ++t) c += load_v<V>(g + t * W) * load_v<V>(xr + t * W);
    T s = 0;
    for (int i = 0; i < W; ++i) s += c[i];
    out[p] += s;
  }
  for (int64_t l = nv * W; l < a.n; ++l)  // the last n mod W columns
    for (p = p0; p < p1; ++p) out[p] += g[l] * x[static_cast<int64_t>(a.idx[p]) * a.ldx + l];
}

// Work item = row; a thread's rows [r0, r1) go over the images in order, so that one image's
// X stays in cache while its rows use it.
template <typename T, typename V>
SST_INLINE void sddmm_items(const SddmmArgs& a, int64_t r0, int64_t r1) {
  T* out = static_cast<T*>(a.out);
  for (int64_t p = a.ptr[r0]; p < a.ptr[r1]; ++p) out[p] = T(0);
  for (int64_t img = 0; img < a.n_img; ++img) {
    const T* g = static_cast<const T*>(a.g) + img * a.g_img;
    const T* x = static_cast<const T*>(a.x) + img * a.x_img;
    for (int64_t r = r0; r < r1; ++r)
      if (a.ptr[r] < a.ptr[r + 1]) sddmm_row<T, V>(a, g + r * a.ldg, x, a.ptr[r], a.ptr[r + 1], out);
  }
}

// ------------------------------------------------------------------------------ transpose
// dst (cols, rows) = src (rows, cols)^T, rows [r0, r1), in square blocks that stay in cache.
template <typename T>
SST_INLINE void transpose_rows(const T* s, int64_t rows, int64_t cols, T* d, int64_t r0,
                               int64_t r1) {
  constexpr int64_t B = 16;
  for (int64_t rb = r0; rb < r1; rb += B) {
    const int64_t re = rb + B < r1 ? rb + B : r1;
    for (int64_t cb = 0; cb < cols; cb += B) {
      const int64_t ce = cb + B < cols ? cb + B : cols;
      for (int64_t c = cb; c < ce; ++c)
        for (int64_t r = rb; r < re; ++r) d[c * rows + r] = s[r * cols + c];
    }
  }
}

struct TransposeArgs {
  const void* src;
  int64_t rows, cols;
  void* dst;
};

// fp32 in 8 x 8 blocks through registers (unpack, shuffle, 128-bit lane swap), edges scalar;
// rows [r0, r1) with r0 a multiple of 8.
SST_INLINE void transpose8(const float* s, int64_t rows, int64_t cols, float* d, int64_t r0,
                           int64_t r1) {
  const int64_t rb = r0 + (r1 - r0) / 8 * 8, cb = cols / 8 * 8;
  for (int64_t r = r0; r < rb; r += 8) {
    for (int64_t c = 0; c < cb; c += 8) {
      v8f v[8], t[8];
      for (int i = 0; i < 8; ++i) v[i] = load_v<v8f>(s + (r + i) * cols + c);
      for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shufflevector(v[i], v[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = __builtin_shufflevector(v[i], v[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
      }
      for (int i = 0; i < 8; i += 4) {
        v[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        v[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        v[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        v[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
      }
      for (int i = 0; i < 4; ++i) {
        store_v(d + (c + i) * rows + r,
                __builtin_shufflevector(v[i], v[i + 4], 0, 1, 2, 3, 8, 9, 10, 11));
        store_v(d + (c + i + 4) * rows + r,
                __builtin_shufflevector(v[i], v[i + 4], 4, 5, 6, 7, 12, 13, 14, 15));
      }
    }
    for (int64_t rr = r; rr < r + 8; ++rr)
      for (int64_t c = cb; c < cols; ++c) d[c * rows + rr] = s[rr * cols + c];
  }
  transpose_rows(s, rows, cols, d, rb, r1);
}

// ------------------------------------------------------------------------------ dispatch
template <typename T, typename V>
struct Kernels {
  static void spmm(const SpmmArgs& a, int64_t i0, int64_t i1) {
    spmm_items<T, V>(a, i0, i1);
  }
  static void sddmm(const SddmmArgs& a, int64_t r0, int64_t r1) { sddmm_items<T, V>(a, r0, r1); }
  static void transpose(const TransposeArgs& a, int64_t r0, int64_t r1) {
    transpose_rows(static_cast<const T*>(a.src), a.rows, a.cols, static_cast<T*>(a.dst), r0, r1);
  }
};

#ifdef SST_X86
SST_AVX2 void transpose_avx2(const TransposeArgs& a, int64_t r0, int64_t r1) {
  transpose8(static_cast<const float*>(a.src), a.rows, a.cols, static_cast<float*>(a.dst), r0, r1);
}

template <typename T, typename V>
struct KernelsAvx512 {
  SST_AVX512 static void spmm(const SpmmArgs& a, int64_t i0, int64_t i1) {
    spmm_items<T, V>(a, i0, i1);
  }
  SST_AVX512 static void sddmm(const SddmmArgs& a, int64_t r0, int64_t r1) {
    sddmm_items<T, V>(a, r0, r1);
  }
};

template <typename T, typename V>
struct KernelsAvx2 {
  SST_AVX2 static void spmm(const SpmmArgs& a, int64_t i0, int64_t i1) {
    spmm_items<T, V>(a, i0, i1);
  }
  SST_AVX2 static void sddmm(const SddmmArgs& a, int64_t r0, int64_t r1) {
    sddmm_items<T, V>(a, r0, r1);
  }
};
#endif

typedef void (*SpmmFn)(const SpmmArgs&, int64_t, int64_t);
typedef void (*SddmmFn)(const SddmmArgs&, int64_t, int64_t);
typedef void (*TransposeFn)(const TransposeArgs&, int64_t, int64_t);

// By dtype code: 0 = float32, 1 = float64.
SpmmFn spmm_table[2] = {Kernels<float, v4f>::spmm, Kernels<double, v2d>::spmm};
SddmmFn sddmm_table[2] = {Kernels<float, v4f>::sddmm, Kernels<double, v2d>::sddmm};
TransposeFn transpose_table[2] = {Kernels<float, v4f>::transpose,
                                        Kernels<double, v2d>::transpose};
const char* isa_name = "generic";

void select_kernels() {
#ifdef SST_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    spmm_table[0] = KernelsAvx512<float, v16f>::spmm;
    spmm_table[1] = KernelsAvx512<double, v8d>::spmm;
    sddmm_table[0] = KernelsAvx512<float, v16f>::sddmm;
    sddmm_table[1] = KernelsAvx512<double, v8d>::sddmm;
    transpose_table[0] = transpose_avx2;
    isa_name = "avx512";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    spmm_table[0] = KernelsAvx2<float, v8f>::spmm;
    spmm_table[1] = KernelsAvx2<double, v4d>::spmm;
    sddmm_table[0] = KernelsAvx2<float, v8f>::sddmm;
    sddmm_table[1] = KernelsAvx2<double, v4d>::sddmm;
    transpose_table[0] = transpose_avx2;
    isa_name = "avx2";
  }
#endif
}

bool valid_dtype(int dtype) {
  if (dtype == 0 || dtype == 1) return true;
  PyErr_SetString(PyExc_ValueError, "dtype code must be 0 (float32) or 1 (float64)");
  return false;
}

// spmm(dtype, ptr, idx, values, bias, x, ldx, x_img, y, y_img, y_row, y_col, n, n_img, n_rows,
//      chunk, nnz, threads)
PyObject* py_spmm(PyObject*, PyObject* args) {
  unsigned long long p, idx, values, bias, x, y;
  long long ldx, x_img, y_img, y_row, y_col, n, n_img, n_rows, chunk, nnz;
  int dtype, threads;
  if (!PyArg_ParseTuple(args, "iKKKKKLLKLLLLLLLLi", &dtype, &p, &idx, &values, &bias, &x,
                        &ldx, &x_img, &y, &y_img, &y_row, &y_col, &n, &n_img, &n_rows, &chunk,
                        &nnz, &threads))
    return nullptr;
  if (!valid_dtype(dtype)) return nullptr;
  if (chunk < 1) chunk = n > 0 ? n : 1;
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  SpmmArgs a{ptr<const int32_t>(p), ptr<const int32_t>(idx), ptr<const void>(values), ptr<const void>(bias), ptr<const void>(x), ldx, x_img,
             ptr<void>(y), y_img, y_row, y_col, n, n_img, n_rows, chunk, n_chunks};
  const int t = (nnz + n_rows) * n * n_img < kSerialWork ? 1 : threads;
  Py_BEGIN_ALLOW_THREADS
  run_parallel(spmm_table[dtype], a, n_img * n_chunks * n_rows, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// sddmm(dtype, ptr, idx, g, ldg, g_img, x, ldx, x_img, out, n, n_img, n_rows, nnz, threads)
PyObject* py_sddmm(PyObject*, PyObject* args) {
  unsigned long long p, idx, g, x, out;
  long long ldg, g_img, ldx, x_img, n, n_img, n_rows, nnz;
  int dtype, threads;
  if (!PyArg_ParseTuple(args, "iKKKLLKLLKLLLLi", &dtype, &p, &idx, &g, &ldg, &g_img, &x, &ldx,
                        &x_img, &out, &n, &n_img, &n_rows, &nnz, &threads))
    return nullptr;
  if (!valid_dtype(dtype)) return nullptr;
  SddmmArgs a{ptr<const int32_t>(p), ptr<const int32_t>(idx), ptr<const void>(g), ldg, g_img,
              ptr<const void>(x), ldx, x_img, ptr<void>(out), n, n_img, n_rows};
  const int t = nnz * n * n_img < kSerialWork ? 1 : threads;
  Py_BEGIN_ALLOW_THREADS
  run_parallel(sddmm_table[dtype], a, n_rows, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// transpose(dtype, src, n, rows, cols, dst, threads): dst (n, cols, rows) = src (n, rows,
// cols) with each matrix transposed; all n in one parallel region (a batch's column blocks).
PyObject* py_transpose(PyObject*, PyObject* args) {
  unsigned long long src, dst;
  long long n, rows, cols;
  int dtype, threads;
  if (!PyArg_ParseTuple(args, "iKLLLKi", &dtype, &src, &n, &rows, &cols, &dst, &threads))
    return nullptr;
  if (!valid_dtype(dtype)) return nullptr;
  TransposeArgs a{ptr<const void>(src), rows, cols, ptr<void>(dst)};
  // work item = 16 rows of one matrix
  const int t = n * rows * cols < 2 * kSerialWork ? 1 : threads;
  const int64_t bands = (rows + 15) / 16, size = rows * cols * (dtype == 0 ? 4 : 8);
  Py_BEGIN_ALLOW_THREADS
  const TransposeFn fn = transpose_table[dtype];
  run_parallel(
      [fn, rows, bands, size](const TransposeArgs& b, int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1;) {  // the items [i, end) that lie in matrix m
          const int64_t m = i / bands, end = (m + 1) * bands < i1 ? (m + 1) * bands : i1;
          const int64_t r0 = (i - m * bands) * 16, r1 = (end - m * bands) * 16;
          TransposeArgs one{static_cast<const char*>(b.src) + m * size, b.rows, b.cols,
                            static_cast<char*>(b.dst) + m * size};
          fn(one, r0, r1 < rows ? r1 : rows);
          i = end;
        }
      },
      a, n * bands, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// ------------------------------------------------------------------------------ im2col
// cols[b, (c * kh + ky) * kw + kx, oy * ow + ox] = x[b, c, oy * sy - py + ky * dy,
// ox * sx - px + kx * dx] (0 outside), F.unfold's layout; col2im adds the columns back
// (F.fold) into a zeroed x. Work item = one (image, channel) plane: col2im's writes never
// overlap.
struct Im2colArgs {
  void* x;     // (B, C, h, w)
  void* cols;  // (B, C * kh * kw, oh * ow)
  int64_t c, h, w, kh, kw, sy, sx, py, px, dy, dx, oh, ow;
};

template <typename T, bool BACK>
void im2col_planes(const Im2colArgs& a, int64_t i0, int64_t i1) {
  const int64_t taps = a.kh * a.kw, len = a.oh * a.ow;
  for (int64_t item = i0; item < i1; ++item) {
    T* x = static_cast<T*>(a.x) + item * a.h * a.w;
    T* cols = static_cast<T*>(a.cols) + item * taps * len;  // (b, c) planes are consecutive
    // each thread zeroes its own planes: a fresh output's first-touch page faults and the
    // zeroing run in parallel
    if (BACK) std::memset(x, 0, a.h * a.w * sizeof(T));
    for (int64_t ky = 0; ky < a.kh; ++ky) {
      for (int64_t kx = 0; kx < a.kw; ++kx) {
        T* col = cols + (ky * a.kw + kx) * len;
        for (int64_t oy = 0; oy < a.oh; ++oy) {
          const int64_t iy = oy * a.sy - a.py + ky * a.dy;
          T* crow = col + oy * a.ow;
          if (iy < 0 || iy >= a.h) {
            if (!BACK)
              for (int64_t ox = 0; ox < a.ow; ++ox) crow[ox] = T(0);
            continue;
          }
          T* xrow = x + iy * a.w;
          const int64_t ix0 = kx * a.dx - a.px;
          // ox in [lo, hi) reads inside the row: ox * sx + ix0 in [0, w)
          int64_t lo = ix0 >= 0 ? 0 : (-ix0 + a.sx - 1) / a.sx;
          int64_t hi = a.w - ix0 <= 0 ? 0 : (a.w - ix0 + a.sx - 1) / a.sx;
          lo = lo < a.ow ? lo : a.ow;
          hi = hi < a.ow ? hi : a.ow;
          hi = hi > lo ? hi : lo;
          if (BACK) {
            for (int64_t ox = lo; ox < hi; ++ox) xrow[ox * a.sx + ix0] += crow[ox];
          } else {
            for (int64_t ox = 0; ox < lo; ++ox) crow[ox] = T(0);
            if (a.sx == 1) {  // rows are short (8 to 32): a loop, not a memcpy call
              const T* src = xrow + ix0;
              for (int64_t ox = lo; ox < hi; ++ox) crow[ox] = src[ox];
            } else {
              for (int64_t ox = lo; ox < hi; ++ox) crow[ox] = xrow[ox * a.sx + ix0];
            }
            for (int64_t ox = hi; ox < a.ow; ++ox) crow[ox] = T(0);
          }
        }
      }
    }
  }
}

struct GatherArgs {
  const void* src;
  const int32_t* perm;
  void* dst;
  int dtype;
};

void gather_range(const GatherArgs& a, int64_t i0, int64_t i1) {
  if (a.dtype == 0) {
    const float* s = static_cast<const float*>(a.src);
    float* d = static_cast<float*>(a.dst);
    for (int64_t i = i0; i < i1; ++i) d[i] = s[a.perm[i]];
  } else {
    const double* s = static_cast<const double*>(a.src);
    double* d = static_cast<double*>(a.dst);
    for (int64_t i = i0; i < i1; ++i) d[i] = s[a.perm[i]];
  }
}

// gather(dtype, src, perm, n, dst, threads): dst[i] = src[perm[i]] (values in CSC order).
PyObject* py_gather(PyObject*, PyObject* args) {
  unsigned long long src, perm, dst;
  long long n;
  int dtype, threads;
  if (!PyArg_ParseTuple(args, "iKKLKi", &dtype, &src, &perm, &n, &dst, &threads)) return nullptr;
  if (!valid_dtype(dtype)) return nullptr;
  GatherArgs a{ptr<const void>(src), ptr<const int32_t>(perm), ptr<void>(dst), dtype};
  const int t = n < 8 * kSerialWork ? 1 : threads;
  Py_BEGIN_ALLOW_THREADS
  run_parallel(gather_range, a, n, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// im2col(dtype, back, x, cols, n_img, c, h, w, kh, kw, sy, sx, py, px, dy, dx, oh, ow,
//        threads): back = 0 fills cols from x; back = 1 sets x to the sum of cols' taps.
PyObject* py_im2col(PyObject*, PyObject* args) {
  unsigned long long x, cols;
  long long n_img, c, h, w, kh, kw, sy, sx, py, px, dy, dx, oh, ow;
  int dtype, back, threads;
  if (!PyArg_ParseTuple(args, "iiKKLLLLLLLLLLLLLLi", &dtype, &back, &x, &cols, &n_img, &c, &h,
                        &w, &kh, &kw, &sy, &sx, &py, &px, &dy, &dx, &oh, &ow, &threads))
    return nullptr;
  if (!valid_dtype(dtype)) return nullptr;
  Im2colArgs a{ptr<void>(x), ptr<void>(cols), c, h, w, kh, kw, sy, sx, py, px, dy, dx, oh, ow};
  const int64_t items = n_img * c;
  const int t = items * kh * kw * oh * ow < 8 * kSerialWork ? 1 : threads;
  Py_BEGIN_ALLOW_THREADS
  if (dtype == 0)
    run_parallel(back ? im2col_planes<float, true> : im2col_planes<float, false>, a, items, t);
  else
    run_parallel(back ? im2col_planes<double, true> : im2col_planes<double, false>, a, items, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* py_isa(PyObject*, PyObject*) { return PyUnicode_FromString(isa_name); }

PyObject* py_openmp(PyObject*, PyObject*) {
#ifdef _OPENMP
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"spmm", py_spmm, METH_VARARGS, "Compressed sparse rows times column-major batches."},
    {"sddmm", py_sddmm, METH_VARARGS, "Sampled dense-dense product at the kept positions."},
    {"transpose", py_transpose, METH_VARARGS, "Transposes a batch of row-major matrices."},
    {"gather", py_gather, METH_VARARGS, "dst[i] = src[perm[i]]."},
    {"im2col", py_im2col, METH_VARARGS, "F.unfold (back = 0) and F.fold (back = 1)."},
    {"isa", py_isa, METH_NOARGS, "Instruction set the kernels were dispatched to."},
    {"openmp", py_openmp, METH_NOARGS, "Whether the kernels were built with OpenMP."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sparse_train", "Sparse training CPU kernels.",
                      -1, methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__sparse_train(void) {
  select_kernels();
  return PyModule_Create(&module);
}
