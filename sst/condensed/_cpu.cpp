// Condensed (constant fan-in) sparse kernels for the CPU: fp32 inputs, outputs and sums;
// values fp32 or bf16 (Val = float or Bf16, converted to fp32 as they are loaded).
//
// A condensed matrix holds, per surviving output neuron r, k values V[r, j] and k input
// indices I[r, j] (Lasby et al., "Dynamic Sparse Training with Structured Sparsity",
// ICLR 2024):  y[row(r)] = b[row(r)] + sum_j V[r, j] * x[I[r, j]].
//
// gemv: x is (B, in) row-major; four inputs gathered by scalar loads into a vector, times four
//       values (portable SSE2 / NEON width; on Zen 4 faster than AVX-512 gathers).
// perm: the same product for a few rows of x from a windowed layout (AVX-512, see below).
// spmm: X is (in, L) rows (a transposed batch, or the rows of a virtual im2col given by a
//       per-index offset table `tapoff`); Y[row(r), l] = b + sum_j V[r, j] * X[I[r, j], l],
//       vectorised along l, so every weight is one broadcast and L/16 FMAs.
//
// bf16 values are the upper 16 bits of an fp32 (same exponent, 8-bit significand): the
// conversion is a 16-bit left shift, so they need no bf16 instructions (vdpbf16ps would also
// round the inputs to bf16). They halve the bytes of the weights, which a batch-1 product
// streams once per call.
//
// Index types: uint8 (in <= 256), uint16 (in <= 32768), int32. The parallel regions are
// OpenMP; on Linux the extension binds to the libgomp.so.1 that torch has already loaded,
// so it shares torch's thread pool instead of competing with it.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kernel_common.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#define SST_X86 1
#include <immintrin.h>
#define SST_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define SST_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace {

// A bfloat16 value: the upper half of an fp32's bits.
struct Bf16 {
  uint16_t bits;
};

SST_INLINE float to_float(float v) { return v; }

SST_INLINE float to_float(Bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

struct GemvArgs {
  const float* x;  // (B, ldx)
  int64_t ldx, batch;
  const void* values;   // (n_live, k) of Val
  const void* indices;  // (n_live, k)
  int64_t k;
  const int32_t* rows;  // output row of each live row, or null for the identity
  const float* bias;    // indexed by output row, or null
  float* y;             // (B, ldy)
  int64_t ldy;
};

struct SpmmArgs {
  const float* x;          // per image: rows of length >= L
  int64_t ldx;             // row stride of x (used when tapoff is null)
  int64_t x_img;           // image stride of x
  const int32_t* tapoff;   // offset of index t's row, or null for t * ldx
  const void* values;      // (n_live, k) of Val
  const void* indices;
  int64_t k;
  const int32_t* rows;
  const float* bias;
  float* y;
  int64_t y_img, y_row, y_col;  // y[img * y_img + row * y_row + l * y_col]
  int64_t length;               // L, columns per image
  int64_t chunk;                // columns per work item (cache blocking of x)
  int64_t n_chunks, n_live;
};

template <typename Idx>
SST_INLINE int64_t row_of(const Idx* I, int64_t j) {
  return static_cast<int64_t>(I[j]);
}

// GCC/Clang vector extensions: lowered to zmm, ymm or xmm by the calling function's target.
typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

// ------------------------------------------------------------------------------ gemv
// Four consecutive values as fp32 (bf16: one 8-byte load, each 16 bits moved to the top
// of a 32-bit lane; on x86 one SSE2 interleave with zeros).
SST_INLINE v4f load4(const float* v) {
  v4f w;
  std::memcpy(&w, v, sizeof w);
  return w;
}

SST_INLINE v4f load4(const Bf16* v) {
#ifdef SST_X86
  const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(v));
  return static_cast<v4f>(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h)));
#else
  typedef uint16_t v4u16 __attribute__((vector_size(8)));
  typedef uint32_t v4u32 __attribute__((vector_size(16)));
  v4u16 h;
  std::memcpy(&h, v, sizeof h);
  const v4u32 bits = __builtin_convertvector(h, v4u32) << 16;
  v4f w;
  std::memcpy(&w, &bits, sizeof w);
  return w;
#endif
}

// sum_j v[j] * x[I[j]]: lane i of the accumulator sums the weights j = i mod 4.
template <typename Val, typename Idx>
SST_INLINE float gather_dot(const Val* v, const Idx* I, const float* x, int64_t n) {
  v4f acc = {0.f, 0.f, 0.f, 0.f};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const v4f xs = {x[row_of(I, j)], x[row_of(I, j + 1)], x[row_of(I, j + 2)],
                      x[row_of(I, j + 3)]};
    acc += load4(v + j) * xs;
  }
  for (; j < n; ++j) acc[0] += to_float(v[j]) * x[row_of(I, j)];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <typename Val, typename Idx>
void gemv_scalar(const GemvArgs& a, int64_t r0, int64_t r1) {
  const Idx* indices = static_cast<const Idx*>(a.indices);
  for (int64_t r = r0; r < r1; ++r) {
    const Val* v = static_cast<const Val*>(a.values) + r * a.k;
    const Idx* I = indices + r * a.k;
    const int64_t row = a.rows ? a.rows[r] : r;
    const float b = a.bias ? a.bias[row] : 0.0f;
    for (int64_t q = 0; q < a.batch; ++q)
      a.y[q * a.ldy + row] = b + gather_dot(v, I, a.x + q * a.ldx, a.k);
  }
}

#ifdef SST_X86
// ------------------------------------------------------------------------------ perm
// Windowed layout for small batches (AVX-512). Live rows are taken 16 at a time (one per
// lane) and the inputs 32 at a time (a window, two zmm registers). For group g and window
// w, cnt[g, w] "ops" follow, each holding for every lane one weight of that lane's row whose
// input lies in the window (value 0 where the row has fewer): 16 uint8 positions in the
// window and 16 values. An op is one vpermt2ps (the 16 gathered inputs, from registers)
// and one FMA into the lane's accumulator, so no gather and no horizontal sum is needed.
// bf16 values of ops o, o + 1 (o even, both in the window) are interleaved by lane, so that
// one 64-byte load holds both: lane l's 32-bit word is value[o, l] | value[o + 1, l] << 16,
// and the two fp32 vectors are word << 16 and word & 0xFFFF0000 (no shuffle, which would
// compete with vpermt2ps for its port). A last odd op is stored plain (16 bf16).
struct PermArgs {
  const float* x;  // (B, ldx), in valid columns per row
  int64_t ldx, batch, in;
  const uint8_t* cnt;      // (n_groups, n_windows)
  const int64_t* offset;   // (n_groups) first op of each group
  const uint8_t* pos;      // (n_ops, 16)
  const void* values;      // (n_ops, 16) of Val
  const float* bias;       // (n_groups * 16) bias of each lane's row, 0 for padding
  const int32_t* rows;     // (n_groups * 16) output row of each lane, -1 for padding
  float* y;                // (B, ldy)
  int64_t ldy, n_windows;
};

SST_AVX512 SST_INLINE void load_ops(const float* v, __m512& v0, __m512& v1) {
  v0 = _mm512_loadu_ps(v);
  v1 = _mm512_loadu_ps(v + 16);
}

SST_AVX512 SST_INLINE void load_ops(const Bf16* v, __m512& v0, __m512& v1) {
  const __m512i w = _mm512_loadu_si512(v);
  v0 = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  v1 = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

SST_AVX512 SST_INLINE __m512 load_op(const float* v) { return _mm512_loadu_ps(v); }

SST_AVX512 SST_INLINE __m512 load_op(const Bf16* v) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename Val, int NB>
SST_AVX512 SST_INLINE void perm_group(const PermArgs& a, int64_t g, const float* x, float* y) {
  __m512 acc[NB], acc2[NB];
  const __m512 b = _mm512_loadu_ps(a.bias + g * 16);
  for (int q = 0; q < NB; ++q) {
    acc[q] = b;
    acc2[q] = _mm512_setzero_ps();
  }
  const uint8_t* cnt = a.cnt + g * a.n_windows;
  const uint8_t* pos = a.pos + a.offset[g] * 16;
  const Val* val = static_cast<const Val*>(a.values) + a.offset[g] * 16;
  for (int64_t w = 0; w < a.n_windows; ++w) {
    const int c = cnt[w];
    if (c == 0) continue;
    const int64_t left = a.in - w * 32;
    const __mmask16 m_lo = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1u);
    const __mmask16 m_hi =
        left >= 32 ? 0xFFFF : left <= 16 ? 0 : static_cast<__mmask16>((1u << (left - 16)) - 1u);
    __m512 lo[NB], hi[NB];
    for (int q = 0; q < NB; ++q) {
      lo[q] = _mm512_maskz_loadu_ps(m_lo, x + q * a.ldx + w * 32);
      hi[q] = _mm512_maskz_loadu_ps(m_hi, x + q * a.ldx + w * 32 + 16);
    }
    int o = 0;
    for (; o + 2 <= c; o += 2) {
      const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pos)));
      const __m512i i1 =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pos + 16)));
      __m512 v0, v1;
      load_ops(val, v0, v1);
      for (int q = 0; q < NB; ++q) {
        acc[q] = _mm512_fmadd_ps(v0, _mm512_permutex2var_ps(lo[q], i0, hi[q]), acc[q]);
        acc2[q] = _mm512_fmadd_ps(v1, _mm512_permutex2var_ps(lo[q], i1, hi[q]), acc2[q]);
      }
      pos += 32;
      val += 32;
    }
    if (o < c) {
      const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pos)));
      const __m512 v0 = load_op(val);
      for (int q = 0; q < NB; ++q)
        acc[q] = _mm512_fmadd_ps(v0, _mm512_permutex2var_ps(lo[q], i0, hi[q]), acc[q]);
      pos += 16;
      val += 16;
    }
  }
  const int32_t* rows = a.rows + g * 16;
  const bool contiguous = rows[15] >= 0 && rows[15] - rows[0] == 15;
  for (int q = 0; q < NB; ++q) {
    const __m512 sum = _mm512_add_ps(acc[q], acc2[q]);
    float* yq = y + q * a.ldy;
    if (contiguous) {
      _mm512_storeu_ps(yq + rows[0], sum);
    } else {
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, sum);
      for (int l = 0; l < 16; ++l)
        if (rows[l] >= 0) yq[rows[l]] = lanes[l];
    }
  }
}

template <typename Val>
SST_AVX512 void perm_avx512(const PermArgs& a, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    int64_t q = 0;
    for (; q + 4 <= a.batch; q += 4) perm_group<Val, 4>(a, g, a.x + q * a.ldx, a.y + q * a.ldy);
    for (; q + 2 <= a.batch; q += 2) perm_group<Val, 2>(a, g, a.x + q * a.ldx, a.y + q * a.ldy);
    for (; q < a.batch; ++q) perm_group<Val, 1>(a, g, a.x + q * a.ldx, a.y + q * a.ldy);
  }
}
#endif  // SST_X86

// ------------------------------------------------------------------------------ spmm

template <typename V>
SST_INLINE V load_v(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
SST_INLINE void store_v(float* y, int64_t stride, const V& v) {
  constexpr int n = sizeof(V) / sizeof(float);
  if (stride == 1) {
    std::memcpy(y, &v, sizeof(V));
  } else {
    for (int i = 0; i < n; ++i) y[i * stride] = v[i];
  }
}

// One tile of NV vectors of type V along l: sum over the k weights of one live row. U
// weights run in parallel into separate accumulators so that at least four FMAs are
// independent (an FMA's latency is about four times its throughput).
template <typename Val, typename Idx, bool TAP, typename V, int NV>
SST_INLINE void spmm_tile(const SpmmArgs& a, const float* x, const Val* v, const Idx* I,
                          float b, float* y) {
  constexpr int W = sizeof(V) / sizeof(float);
  constexpr int U = NV >= 4 ? 1 : 4 / NV;
  V acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int t = 0; t < NV; ++t) acc[u][t] = V{} + (u == 0 ? b : 0.0f);
  int64_t j = 0;
  for (; j + U <= a.k; j += U) {
    for (int u = 0; u < U; ++u) {
      const float w = to_float(v[j + u]);
      const float* p =
          x + (TAP ? static_cast<int64_t>(a.tapoff[row_of(I, j + u)]) : row_of(I, j + u) * a.ldx);
      for (int t = 0; t < NV; ++t) acc[u][t] += w * load_v<V>(p + t * W);
    }
  }
  for (; j < a.k; ++j) {
    const float w = to_float(v[j]);
    const float* p = x + (TAP ? static_cast<int64_t>(a.tapoff[row_of(I, j)]) : row_of(I, j) * a.ldx);
    for (int t = 0; t < NV; ++t) acc[0][t] += w * load_v<V>(p + t * W);
  }
  for (int u = 1; u < U; ++u)
    for (int t = 0; t < NV; ++t) acc[0][t] += acc[u][t];
  for (int t = 0; t < NV; ++t) store_v<V>(y + t * W * a.y_col, a.y_col, acc[0][t]);
}

template <typename Val, typename Idx, bool TAP>
SST_INLINE void spmm_tail(const SpmmArgs& a, const float* x, const Val* v, const Idx* I,
                          float b, float* y, int64_t n) {
  float acc[4] = {b, b, b, b};
  for (int64_t j = 0; j < a.k; ++j) {
    const float w = to_float(v[j]);
    const float* p = x + (TAP ? static_cast<int64_t>(a.tapoff[row_of(I, j)]) : row_of(I, j) * a.ldx);
    for (int64_t i = 0; i < n; ++i) acc[i] += w * p[i];
  }
  for (int64_t i = 0; i < n; ++i) y[i * a.y_col] = acc[i];
}

// Columns [l0, l1) of live row r of one image.
template <typename Val, typename Idx, bool TAP>
SST_INLINE void spmm_segment(const SpmmArgs& a, const float* x, float* y_img, int64_t r,
                             int64_t l0, int64_t l1) {
  const Val* v = static_cast<const Val*>(a.values) + r * a.k;
  const Idx* I = static_cast<const Idx*>(a.indices) + r * a.k;
  const int64_t row = a.rows ? a.rows[r] : r;
  const float b = a.bias ? a.bias[row] : 0.0f;
  float* y = y_img + row * a.y_row;
  int64_t l = l0;
  for (; l + 128 <= l1; l += 128)
    spmm_tile<Val, Idx, TAP, v16f, 8>(a, x + l, v, I, b, y + l * a.y_col);
  for (; l + 64 <= l1; l += 64)
    spmm_tile<Val, Idx, TAP, v16f, 4>(a, x + l, v, I, b, y + l * a.y_col);
  if (l + 32 <= l1) {
    spmm_tile<Val, Idx, TAP, v16f, 2>(a, x + l, v, I, b, y + l * a.y_col);
    l += 32;
  }
  if (l + 16 <= l1) {
    spmm_tile<Val, Idx, TAP, v16f, 1>(a, x + l, v, I, b, y + l * a.y_col);
    l += 16;
  }
  if (l + 8 <= l1) {
    spmm_tile<Val, Idx, TAP, v8f, 1>(a, x + l, v, I, b, y + l * a.y_col);
    l += 8;
  }
  if (l + 4 <= l1) {
    spmm_tile<Val, Idx, TAP, v4f, 1>(a, x + l, v, I, b, y + l * a.y_col);
    l += 4;
  }
  if (l < l1) spmm_tail<Val, Idx, TAP>(a, x + l, v, I, b, y + l * a.y_col, l1 - l);
}

// Work item = (image, column chunk, live row), row fastest: a thread's contiguous range of
// items stays on few chunks, so their columns of x stay in its cache.
template <typename Val, typename Idx, bool TAP>
SST_INLINE void spmm_items(const SpmmArgs& a, int64_t i0, int64_t i1) {
  for (int64_t item = i0; item < i1;) {
    const int64_t r = item % a.n_live;
    const int64_t chunk = (item / a.n_live) % a.n_chunks;
    const int64_t img = item / (a.n_live * a.n_chunks);
    const int64_t l0 = chunk * a.chunk;
    const int64_t l1 = l0 + a.chunk < a.length ? l0 + a.chunk : a.length;
    const float* x = a.x + img * a.x_img;
    float* y = a.y + img * a.y_img;
    const int64_t r_end = r + (i1 - item) < a.n_live ? r + (i1 - item) : a.n_live;
    for (int64_t rr = r; rr < r_end; ++rr) spmm_segment<Val, Idx, TAP>(a, x, y, rr, l0, l1);
    item += r_end - r;
  }
}

template <typename Val, typename Idx, bool TAP>
void spmm_generic(const SpmmArgs& a, int64_t i0, int64_t i1) {
  spmm_items<Val, Idx, TAP>(a, i0, i1);
}
#ifdef SST_X86
template <typename Val, typename Idx, bool TAP>
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma,prefer-vector-width=512")))
void spmm_avx512(const SpmmArgs& a, int64_t i0, int64_t i1) {
  spmm_items<Val, Idx, TAP>(a, i0, i1);
}
template <typename Val, typename Idx, bool TAP>
SST_AVX2 void spmm_avx2(const SpmmArgs& a, int64_t i0, int64_t i1) {
  spmm_items<Val, Idx, TAP>(a, i0, i1);
}
#endif

// ------------------------------------------------------------------------------ unstructured
// Unstructured (CSR) layers, whose rows hold different numbers of weights.
//
// csr_gemv (batch 1-3): output rows are taken 8 at a time (a group, one row per lane of a
// ymm register) and the inputs 8 at a time (a window). An "op" holds, for every lane, one
// weight of that lane's row whose input lies in the op's window (0 where the row has fewer)
// and the input's position p in the window, packed into the value itself:
// - fp32: the low 3 mantissa bits hold p (the weight keeps 20 significant bits: relative
//   error < 2^-20); vpermps reads only the low 3 bits of each index lane, so the same
//   register is the permutation and the multiplier;
// - int8: an int16 word (q << 3) | p, sign-extended to 32 bits; q = word >> 3.
// One op is a load, one in-register permute of the window's 8 inputs and one FMA, for up to
// 8 weights (about half of the lanes hold one at 80% sparsity), against a scalar load per
// weight for a gather. The ops of a group are sorted by window; each op carries its
// window's x offset, so the loop has one trip count per group (no branch per window).
struct CsrGemvArgs {
  const float* x;  // (B, ldx), ldx a multiple of 8 and the padding columns zero
  int64_t ldx, batch;
  const int32_t* op_start;  // (n_groups + 1) first op of each group
  const int32_t* op_win;    // (n_ops) x offset of the op's window
  const void* ops;          // (n_ops, 8) packed values
  const float* scale;       // (out) per-row scale (int8), or null
  const float* bias;        // (out) or null
  float* y;                 // (B, ldy)
  int64_t ldy, out;
};

SST_INLINE void csr_gemv_store(const CsrGemvArgs& a, int64_t g, const float* lanes, float* y) {
  const int64_t r0 = g * 8;
  const int64_t n = a.out - r0 < 8 ? a.out - r0 : 8;
  for (int64_t l = 0; l < n; ++l) {
    const float s = a.scale ? a.scale[r0 + l] : 1.0f;
    y[r0 + l] = (a.bias ? a.bias[r0 + l] : 0.0f) + s * lanes[l];
  }
}

// Portable version of the same layout (one lane at a time).
template <typename Op>
void csr_gemv_generic(const CsrGemvArgs& a, int64_t g0, int64_t g1) {
  const Op* ops = static_cast<const Op*>(a.ops);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t q = 0; q < a.batch; ++q) {
      const float* x = a.x + q * a.ldx;
      float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t o = a.op_start[g]; o < a.op_start[g + 1]; ++o) {
        const float* xw = x + a.op_win[o];
        for (int l = 0; l < 8; ++l) {
          const Op word = ops[o * 8 + l];
          if constexpr (std::is_same<Op, float>::value) {
            uint32_t bits;
            std::memcpy(&bits, &word, sizeof bits);
            lanes[l] += word * xw[bits & 7u];
          } else {
            const int32_t w = static_cast<int32_t>(word);
            lanes[l] += static_cast<float>(w >> 3) * xw[w & 7];
          }
        }
      }
      csr_gemv_store(a, g, lanes, a.y + q * a.ldy);
    }
  }
}

#ifdef SST_X86
SST_AVX2 SST_INLINE void csr_op(const float* ops, int64_t o, const float* xw, __m256& acc) {
  const __m256 v = _mm256_loadu_ps(ops + o * 8);
  const __m256 p = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xw), _mm256_castps_si256(v));
  acc = _mm256_fmadd_ps(v, p, acc);
}

SST_AVX2 SST_INLINE void csr_op(const int16_t* ops, int64_t o, const float* xw, __m256& acc) {
  const __m256i w =
      _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ops + o * 8)));
  const __m256 p = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xw), w);
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srai_epi32(w, 3)), p, acc);
}

template <typename Op>
SST_AVX2 void csr_gemv_avx2(const CsrGemvArgs& a, int64_t g0, int64_t g1) {
  const Op* ops = static_cast<const Op*>(a.ops);
  const int32_t* win = a.op_win;
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t end = a.op_start[g + 1];
    for (int64_t q = 0; q < a.batch; ++q) {
      const float* x = a.x + q * a.ldx;
      // four accumulators: an FMA's latency is four times its throughput
      __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
      int64_t o = a.op_start[g];
      for (; o + 4 <= end; o += 4) {
        csr_op(ops, o, x + win[o], acc0);
        csr_op(ops, o + 1, x + win[o + 1], acc1);
        csr_op(ops, o + 2, x + win[o + 2], acc2);
        csr_op(ops, o + 3, x + win[o + 3], acc3);
      }
      for (; o < end; ++o) csr_op(ops, o, x + win[o], acc0);
      const __m256 sum = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
      float* y = a.y + q * a.ldy;
      if (g * 8 + 8 <= a.out) {
        __m256 r = a.scale ? _mm256_mul_ps(sum, _mm256_loadu_ps(a.scale + g * 8)) : sum;
        if (a.bias) r = _mm256_add_ps(r, _mm256_loadu_ps(a.bias + g * 8));
        _mm256_storeu_ps(y + g * 8, r);
      } else {
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, sum);
        csr_gemv_store(a, g, lanes, y);
      }
    }
  }
}
#endif

// csr_spmm: Y[n, l] = b[n] + s[n] * sum_{j in row n} V[j] * X[C[j], l] (s = 1 for fp32
// values, the row's scale for int8), vectorised along l in tiles of 48 columns so that the
// accumulators stay in registers (AVX-512: 3 x 16 floats, AVX2: 6 x 8), then one pass for
// the rest (AVX2: 1-7 vectors, the last masked; otherwise tiles of 32, 16, 8, 4 and 1).
// X rows are the input channels of a 1x1 conv (or unfolded columns, or a transposed batch).
struct CsrSpmmArgs {
  const float* x;
  int64_t ldx, x_img;
  const int32_t* rowptr;  // (rows + 1)
  const void* cols;       // (nnz) uint16 or int32 input rows
  const void* values;     // (nnz) float or int8
  const float* scale;     // (rows) or null
  const float* bias;      // (rows) or null
  float* y;
  int64_t y_img, y_row, y_col, length, chunk, n_chunks, rows;
};

SST_INLINE float to_float(int8_t v) { return static_cast<float>(v); }

template <typename Val, typename Idx, typename V, int NV>
SST_INLINE void csr_tile(const CsrSpmmArgs& a, const float* x, const Val* v, const Idx* I,
                         int64_t nnz, float b, float s, float* y) {
  constexpr int W = sizeof(V) / sizeof(float);
  constexpr int U = NV >= 6 ? 1 : NV >= 3 ? 2 : 8 / NV;
  V acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int t = 0; t < NV; ++t) acc[u][t] = V{};
  int64_t j = 0;
  for (; j + U <= nnz; j += U) {
    for (int u = 0; u < U; ++u) {
      const float w = to_float(v[j + u]);
      const float* p = x + static_cast<int64_t>(I[j + u]) * a.ldx;
      for (int t = 0; t < NV; ++t) acc[u][t] += w * load_v<V>(p + t * W);
    }
  }
  for (; j < nnz; ++j) {
    const float w = to_float(v[j]);
    const float* p = x + static_cast<int64_t>(I[j]) * a.ldx;
    for (int t = 0; t < NV; ++t) acc[0][t] += w * load_v<V>(p + t * W);
  }
  for (int u = 1; u < U; ++u)
    for (int t = 0; t < NV; ++t) acc[0][t] += acc[u][t];
  for (int t = 0; t < NV; ++t) store_v<V>(y + t * W * a.y_col, a.y_col, b + s * acc[0][t]);
}

template <typename Val, typename Idx>
SST_INLINE void csr_column(const CsrSpmmArgs& a, const float* x, const Val* v, const Idx* I,
                           int64_t nnz, float b, float s, float* y) {
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int64_t j = 0;
  for (; j + 4 <= nnz; j += 4)
    for (int u = 0; u < 4; ++u) acc[u] += to_float(v[j + u]) * x[static_cast<int64_t>(I[j + u]) * a.ldx];
  for (; j < nnz; ++j) acc[0] += to_float(v[j]) * x[static_cast<int64_t>(I[j]) * a.ldx];
  *y = b + s * ((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

// Columns [l0, l1) of row r of one image; V is the widest vector (v16f or v8f).
template <typename Val, typename Idx, typename V>
SST_INLINE void csr_segment(const CsrSpmmArgs& a, const float* x, float* y_img, int64_t r,
                            int64_t l0, int64_t l1) {
  constexpr int W = sizeof(V) / sizeof(float);
  const int64_t start = a.rowptr[r], nnz = a.rowptr[r + 1] - start;
  const Val* v = static_cast<const Val*>(a.values) + start;
  const Idx* I = static_cast<const Idx*>(a.cols) + start;
  const float b = a.bias ? a.bias[r] : 0.0f;
  const float s = a.scale ? a.scale[r] : 1.0f;
  float* y = y_img + r * a.y_row;
  int64_t l = l0;
  for (; l + 48 <= l1; l += 48) csr_tile<Val, Idx, V, 48 / W>(a, x + l, v, I, nnz, b, s, y + l * a.y_col);
  if (l + 32 <= l1) {
    csr_tile<Val, Idx, V, 32 / W>(a, x + l, v, I, nnz, b, s, y + l * a.y_col);
    l += 32;
  }
  if (l + 16 <= l1) {
    if constexpr (W == 16)
      csr_tile<Val, Idx, v16f, 1>(a, x + l, v, I, nnz, b, s, y + l * a.y_col);
    else
      csr_tile<Val, Idx, v8f, 2>(a, x + l, v, I, nnz, b, s, y + l * a.y_col);
    l += 16;
  }
  if (l + 8 <= l1) {
    csr_tile<Val, Idx, v8f, 1>(a, x + l, v, I, nnz, b, s, y + l * a.y_col);
    l += 8;
  }
  if (l + 4 <= l1) {
    csr_tile<Val, Idx, v4f, 1>(a, x + l, v, I, nnz, b, s, y + l * a.y_col);
    l += 4;
  }
  for (; l < l1; ++l) csr_column<Val, Idx>(a, x + l, v, I, nnz, b, s, y + l * a.y_col);
}

#ifdef SST_X86
// AVX2: NV ymm accumulators (NV <= 7), the last vector masked to `tail` columns (1..8), so
// that a row's columns take one pass over its weights however L divides by 8: a 7x7 map
// (49 columns) is one pass of 7 vectors instead of a 48-column tile plus a scalar column.
template <typename Val, typename Idx, int NV, bool MASKED = true>
SST_AVX2 SST_INLINE void csr_tile_avx2(const CsrSpmmArgs& a, const float* x, const Val* v,
                                       const Idx* I, int64_t nnz, float b, float s, float* y,
                                       int tail) {
  alignas(32) static const int32_t ramp[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  const __m256i mask =
      _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), _mm256_load_si256(reinterpret_cast<const __m256i*>(ramp)));
  __m256 acc[NV];
  for (int t = 0; t < NV; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t j = 0; j < nnz; ++j) {
    const __m256 w = _mm256_set1_ps(to_float(v[j]));
    const float* p = x + static_cast<int64_t>(I[j]) * a.ldx;
    for (int t = 0; t + 1 < NV; ++t) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * t), acc[t]);
    const __m256 last = MASKED ? _mm256_maskload_ps(p + 8 * (NV - 1), mask)
                               : _mm256_loadu_ps(p + 8 * (NV - 1));
    acc[NV - 1] = _mm256_fmadd_ps(w, last, acc[NV - 1]);
  }
  const __m256 vb = _mm256_set1_ps(b), vs = _mm256_set1_ps(s);
  for (int t = 0; t < NV; ++t) {
    const __m256 r = _mm256_fmadd_ps(vs, acc[t], vb);
    const int n = t + 1 < NV ? 8 : tail;
    if (a.y_col == 1 && n == 8) {
      _mm256_storeu_ps(y + 8 * t, r);
    } else if (a.y_col == 1) {
      _mm256_maskstore_ps(y + 8 * t, mask, r);
    } else {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, r);
      for (int i = 0; i < n; ++i) y[(8 * t + i) * a.y_col] = lanes[i];
    }
  }
}

template <typename Val, typename Idx>
SST_AVX2 void csr_segment_avx2(const CsrSpmmArgs& a, const float* x, float* y_img,
                                          int64_t r, int64_t l0, int64_t l1) {
  const int64_t start = a.rowptr[r], nnz = a.rowptr[r + 1] - start;
  const Val* v = static_cast<const Val*>(a.values) + start;
  const Idx* I = static_cast<const Idx*>(a.cols) + start;
  const float b = a.bias ? a.bias[r] : 0.0f;
  const float s = a.scale ? a.scale[r] : 1.0f;
  float* y = y_img + r * a.y_row;
  int64_t l = l0;
  while ((l1 - l + 7) / 8 > 7) {  // full 48-column tiles while more than 7 vectors remain
    csr_tile_avx2<Val, Idx, 6, false>(a, x + l, v, I, nnz, b, s, y + l * a.y_col, 8);
    l += 48;
  }
  const int64_t rest = l1 - l;
  if (rest <= 0) return;
  const int vecs = static_cast<int>((rest + 7) / 8);
  const int tail = static_cast<int>(rest - 8 * (vecs - 1));
  float* yl = y + l * a.y_col;
  if (tail == 8 && vecs == 6) {
    csr_tile_avx2<Val, Idx, 6, false>(a, x + l, v, I, nnz, b, s, yl, 8);
    return;
  }
  switch (vecs) {
    case 1: csr_tile_avx2<Val, Idx, 1>(a, x + l, v, I, nnz, b, s, yl, tail); break;
    case 2: csr_tile_avx2<Val, Idx, 2>(a, x + l, v, I, nnz, b, s, yl, tail); break;
    case 3: csr_tile_avx2<Val, Idx, 3>(a, x + l, v, I, nnz, b, s, yl, tail); break;
    case 4: csr_tile_avx2<Val, Idx, 4>(a, x + l, v, I, nnz, b, s, yl, tail); break;
    case 5: csr_tile_avx2<Val, Idx, 5>(a, x + l, v, I, nnz, b, s, yl, tail); break;
    case 6: csr_tile_avx2<Val, Idx, 6>(a, x + l, v, I, nnz, b, s, yl, tail); break;
    default: csr_tile_avx2<Val, Idx, 7>(a, x + l, v, I, nnz, b, s, yl, tail); break;
  }
}
#endif

// Work item = (image, column chunk, row), row fastest, as in spmm_items; the last chunk
// runs to the end of the row (up to 2 chunks' columns), so no short chunk is left over.
template <typename Val, typename Idx, typename V, bool AVX2 = false>
SST_INLINE void csr_items(const CsrSpmmArgs& a, int64_t i0, int64_t i1) {
  for (int64_t item = i0; item < i1;) {
    const int64_t r = item % a.rows;
    const int64_t chunk = (item / a.rows) % a.n_chunks;
    const int64_t img = item / (a.rows * a.n_chunks);
    const int64_t l0 = chunk * a.chunk;
    const int64_t l1 = chunk + 1 == a.n_chunks ? a.length : l0 + a.chunk;
    const float* x = a.x + img * a.x_img;
    float* y = a.y + img * a.y_img;
    const int64_t r_end = r + (i1 - item) < a.rows ? r + (i1 - item) : a.rows;
    for (int64_t rr = r; rr < r_end; ++rr) {
#ifdef SST_X86
      if constexpr (AVX2) {
        csr_segment_avx2<Val, Idx>(a, x, y, rr, l0, l1);
        continue;
      }
#endif
      csr_segment<Val, Idx, V>(a, x, y, rr, l0, l1);
    }
    item += r_end - r;
  }
}

template <typename Val, typename Idx>
void csr_spmm_generic(const CsrSpmmArgs& a, int64_t i0, int64_t i1) {
  csr_items<Val, Idx, v8f>(a, i0, i1);
}
#ifdef SST_X86
template <typename Val, typename Idx>
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma,prefer-vector-width=512")))
void csr_spmm_avx512(const CsrSpmmArgs& a, int64_t i0, int64_t i1) {
  csr_items<Val, Idx, v16f>(a, i0, i1);
}
template <typename Val, typename Idx>
SST_AVX2 void csr_spmm_avx2(const CsrSpmmArgs& a, int64_t i0, int64_t i1) {
  csr_items<Val, Idx, v8f, true>(a, i0, i1);
}
#endif

// ------------------------------------------------------------------------------ depthwise
// Dense depthwise 3x3 conv (groups = channels, padding 1, stride 1 or 2), NCHW fp32: the
// layers a sparse MobileNet keeps dense. Per (image, channel) the plane is copied into a
// zero-padded scratch (stride 2: each padded row split into its even and odd columns), so
// that every tap (ky, kx) reads a contiguous run: y[oy, ox] = b + sum w[ky, kx] * src(ky,
// kx)[ox], vectorised along ox.
struct DwArgs {
  const float* x;
  const float* w;     // (C, 3, 3)
  const float* bias;  // (C) or null
  float* y;
  int64_t channels, h, w_in, oh, ow, stride;
};

template <typename V>
SST_INLINE void dw_plane(const DwArgs& a, int64_t plane, float* scratch) {
  constexpr int W = sizeof(V) / sizeof(float);
  const int64_t c = plane % a.channels;
  const float* x = a.x + plane * a.h * a.w_in;
  float* y = a.y + plane * a.oh * a.ow;
  const float* k = a.w + c * 9;
  const float b = a.bias ? a.bias[c] : 0.0f;
  const int64_t hp = a.h + 2, wp = a.w_in + 2;
  // stride 1: rows of width ld = wp; stride 2: per row, even columns then odd columns
  const int64_t half = (wp + 1) / 2;
  const int64_t ld = a.stride == 1 ? wp : 2 * half;
  for (int64_t r = 0; r < hp; ++r) {
    float* row = scratch + r * ld;
    const bool inside = r >= 1 && r <= a.h;
    const float* src = x + (r - 1) * a.w_in;
    if (a.stride == 1) {
      row[0] = 0.0f;
      row[wp - 1] = 0.0f;
      if (inside) std::memcpy(row + 1, src, a.w_in * sizeof(float));
      else std::memset(row + 1, 0, a.w_in * sizeof(float));
    } else {  // padded row in the odd half's space first, then split by column parity
      float* padded = scratch + hp * ld;
      padded[0] = 0.0f;
      padded[wp - 1] = 0.0f;
      padded[wp] = 0.0f;
      if (inside) std::memcpy(padded + 1, src, a.w_in * sizeof(float));
      else std::memset(padded + 1, 0, a.w_in * sizeof(float));
      for (int64_t i = 0; i < half; ++i) {
        row[i] = padded[2 * i];
        row[half + i] = padded[2 * i + 1];
      }
    }
  }
  for (int64_t oy = 0; oy < a.oh; ++oy) {
    const float* rows[3];
    for (int ky = 0; ky < 3; ++ky) rows[ky] = scratch + (oy * a.stride + ky) * ld;
    // tap kx of a row: stride 1 at column ox + kx; stride 2: even[ox], odd[ox], even[ox + 1]
    int64_t off[3];
    if (a.stride == 1) {
      off[0] = 0, off[1] = 1, off[2] = 2;
    } else {
      off[0] = 0, off[1] = half, off[2] = 1;
    }
    int64_t ox = 0;
    for (; ox + W <= a.ow; ox += W) {
      V acc = V{} + b;
      for (int ky = 0; ky < 3; ++ky)
        for (int kx = 0; kx < 3; ++kx) acc += k[ky * 3 + kx] * load_v<V>(rows[ky] + off[kx] + ox);
      std::memcpy(y + oy * a.ow + ox, &acc, sizeof(V));
    }
    for (; ox < a.ow; ++ox) {
      float acc = b;
      for (int ky = 0; ky < 3; ++ky)
        for (int kx = 0; kx < 3; ++kx) acc += k[ky * 3 + kx] * rows[ky][off[kx] + ox];
      y[oy * a.ow + ox] = acc;
    }
  }
}

template <typename V>
SST_INLINE void dw_items(const DwArgs& a, int64_t p0, int64_t p1) {
  const int64_t hp = a.h + 2, wp = a.w_in + 2;
  float* scratch = new float[(hp + 1) * (wp + 2)];  // the planes' rows, then one padded row
  for (int64_t p = p0; p < p1; ++p) dw_plane<V>(a, p, scratch);
  delete[] scratch;
}

void dw_generic(const DwArgs& a, int64_t p0, int64_t p1) { dw_items<v4f>(a, p0, p1); }
#ifdef SST_X86
SST_AVX2 void dw_avx2(const DwArgs& a, int64_t p0, int64_t p1) { dw_items<v8f>(a, p0, p1); }
#endif

// ------------------------------------------------------------------------------ dispatch
typedef void (*GemvFn)(const GemvArgs&, int64_t, int64_t);
typedef void (*SpmmFn)(const SpmmArgs&, int64_t, int64_t);

// By value type (fp32, bf16), then index type (uint8, uint16, int32); spmm then by tapoff.
const GemvFn gemv_table[2][3] = {
    {gemv_scalar<float, uint8_t>, gemv_scalar<float, uint16_t>, gemv_scalar<float, int32_t>},
    {gemv_scalar<Bf16, uint8_t>, gemv_scalar<Bf16, uint16_t>, gemv_scalar<Bf16, int32_t>}};
SpmmFn spmm_table[2][3][2];
typedef void (*CsrGemvFn)(const CsrGemvArgs&, int64_t, int64_t);
typedef void (*CsrSpmmFn)(const CsrSpmmArgs&, int64_t, int64_t);
// By value type (0 fp32, 1 int8), then (spmm) column index type (uint16, int32).
CsrGemvFn csr_gemv_table[2] = {csr_gemv_generic<float>, csr_gemv_generic<int16_t>};
CsrSpmmFn csr_spmm_table[2][2] = {
    {csr_spmm_generic<float, uint16_t>, csr_spmm_generic<float, int32_t>},
    {csr_spmm_generic<int8_t, uint16_t>, csr_spmm_generic<int8_t, int32_t>}};
bool has_avx512 = false;
bool has_avx2 = false;
const char* isa_name = "generic";

int idx_slot(int idx_bytes) {
  return idx_bytes == 1 ? 0 : idx_bytes == 2 ? 1 : idx_bytes == 4 ? 2 : -1;
}

// Value type codes (cpu.py's VALUE_TYPES): 0 = fp32, 1 = bf16.
bool valid_value_type(int value_type) { return value_type == 0 || value_type == 1; }

void select_kernels() {
#define SST_FILL_VAL(SPMM, V, Val)                  \
  spmm_table[V][0][0] = SPMM<Val, uint8_t, false>;  \
  spmm_table[V][0][1] = SPMM<Val, uint8_t, true>;   \
  spmm_table[V][1][0] = SPMM<Val, uint16_t, false>; \
  spmm_table[V][1][1] = SPMM<Val, uint16_t, true>;  \
  spmm_table[V][2][0] = SPMM<Val, int32_t, false>;  \
  spmm_table[V][2][1] = SPMM<Val, int32_t, true>;
#define SST_FILL_CSR(SPMM)                     \
  csr_spmm_table[0][0] = SPMM<float, uint16_t>;  \
  csr_spmm_table[0][1] = SPMM<float, int32_t>;   \
  csr_spmm_table[1][0] = SPMM<int8_t, uint16_t>; \
  csr_spmm_table[1][1] = SPMM<int8_t, int32_t>;
#define SST_FILL(SPMM)        \
  SST_FILL_VAL(SPMM, 0, float) \
  SST_FILL_VAL(SPMM, 1, Bf16)
  SST_FILL(spmm_generic)
#ifdef SST_X86
  __builtin_cpu_init();
  has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    SST_FILL(spmm_avx512)
    SST_FILL_CSR(csr_spmm_avx512)
    has_avx512 = true;
    isa_name = "avx512";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    SST_FILL(spmm_avx2)
    SST_FILL_CSR(csr_spmm_avx2)
    isa_name = "avx2";
  }
  if (has_avx2) {
    csr_gemv_table[0] = csr_gemv_avx2<float>;
    csr_gemv_table[1] = csr_gemv_avx2<int16_t>;
  }
#endif
#undef SST_FILL
#undef SST_FILL_VAL
#undef SST_FILL_CSR
}

// gemv(x, ldx, batch, values, value_type, indices, idx_bytes, k, rows, bias, y, ldy, n_live,
//      threads)
PyObject* py_gemv(PyObject*, PyObject* args) {
  unsigned long long x, values, indices, rows, bias, y;
  long long ldx, batch, k, ldy, n_live;
  int value_type, idx_bytes, threads;
  if (!PyArg_ParseTuple(args, "KLLKiKiLKKKLLi", &x, &ldx, &batch, &values, &value_type, &indices,
                        &idx_bytes, &k, &rows, &bias, &y, &ldy, &n_live, &threads))
    return nullptr;
  const int slot = idx_slot(idx_bytes);
  if (slot < 0 || !valid_value_type(value_type)) {
    PyErr_SetString(PyExc_ValueError, "idx_bytes must be 1, 2 or 4 and value_type 0 or 1");
    return nullptr;
  }
  GemvArgs a{ptr<const float>(x), ldx, batch, ptr<const void>(values), ptr<const void>(indices),
             k, ptr<const int32_t>(rows), ptr<const float>(bias), ptr<float>(y), ldy};
  const int t = n_live * k * batch < kSerialWork ? 1 : threads;
  Py_BEGIN_ALLOW_THREADS
  run_parallel(gemv_table[value_type][slot], a, n_live, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// perm(x, ldx, batch, in, cnt, n_windows, offset, pos, values, value_type, bias, rows, y,
//      ldy, n_groups, work, threads); work = multiply-adds incl. padding, for the thread choice
PyObject* py_perm(PyObject*, PyObject* args) {
  unsigned long long x, cnt, offset, pos, values, bias, rows, y;
  long long ldx, batch, in, n_windows, ldy, n_groups, work;
  int value_type, threads;
  if (!PyArg_ParseTuple(args, "KLLLKLKKKiKKKLLLi", &x, &ldx, &batch, &in, &cnt, &n_windows,
                        &offset, &pos, &values, &value_type, &bias, &rows, &y, &ldy, &n_groups,
                        &work, &threads))
    return nullptr;
  if (!valid_value_type(value_type)) {
    PyErr_SetString(PyExc_ValueError, "value_type must be 0 or 1");
    return nullptr;
  }
#ifdef SST_X86
  if (has_avx512) {
    PermArgs a{ptr<const float>(x),      ldx,
               batch,                    in,
               ptr<const uint8_t>(cnt),  ptr<const int64_t>(offset),
               ptr<const uint8_t>(pos),  ptr<const void>(values),
               ptr<const float>(bias),   ptr<const int32_t>(rows),
               ptr<float>(y),            ldy,
               n_windows};
    const int t = work * batch < kSerialWork ? 1 : threads;
    Py_BEGIN_ALLOW_THREADS
    run_parallel(value_type ? perm_avx512<Bf16> : perm_avx512<float>, a, n_groups, t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
  }
#endif
  PyErr_SetString(PyExc_RuntimeError, "the windowed (perm) kernel needs AVX-512");
  return nullptr;
}

// spmm(x, ldx, x_img, tapoff, values, value_type, indices, idx_bytes, k, rows, bias,
//      y, y_img, y_row, y_col, length, chunk, n_img, n_live, threads)
PyObject* py_spmm(PyObject*, PyObject* args) {
  unsigned long long x, tapoff, values, indices, rows, bias, y;
  long long ldx, x_img, k, y_img, y_row, y_col, length, chunk, n_img, n_live;
  int value_type, idx_bytes, threads;
  if (!PyArg_ParseTuple(args, "KLLKKiKiLKKKLLLLLLLi", &x, &ldx, &x_img, &tapoff, &values,
                        &value_type, &indices, &idx_bytes, &k, &rows, &bias, &y, &y_img, &y_row,
                        &y_col, &length, &chunk, &n_img, &n_live, &threads))
    return nullptr;
  const int slot = idx_slot(idx_bytes);
  if (slot < 0 || chunk < 1 || !valid_value_type(value_type)) {
    PyErr_SetString(PyExc_ValueError,
                    "idx_bytes must be 1, 2 or 4, chunk >= 1 and value_type 0 or 1");
    return nullptr;
  }
  const int64_t n_chunks = (length + chunk - 1) / chunk;
  SpmmArgs a{ptr<const float>(x), ldx, x_img, ptr<const int32_t>(tapoff), ptr<const void>(values),
             ptr<const void>(indices), k, ptr<const int32_t>(rows), ptr<const float>(bias),
             ptr<float>(y), y_img, y_row, y_col, length, chunk, n_chunks, n_live};
  const int64_t items = n_img * n_chunks * n_live;
  const int t = n_img * n_live * k * length < kSerialWork ? 1 : threads;
  SpmmFn fn = spmm_table[value_type][slot][tapoff ? 1 : 0];
  Py_BEGIN_ALLOW_THREADS
  run_parallel(fn, a, items, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// csr_gemv(x, ldx, batch, op_start, op_win, ops, value_type, scale, bias, y, ldy, out,
//          n_groups, work, threads); value_type 0 = fp32 ops, 1 = int8 (int16 words)
PyObject* py_csr_gemv(PyObject*, PyObject* args) {
  unsigned long long x, op_start, op_win, ops, scale, bias, y;
  long long ldx, batch, ldy, out, n_groups, work;
  int value_type, threads;
  if (!PyArg_ParseTuple(args, "KLLKKKiKKKLLLLi", &x, &ldx, &batch, &op_start, &op_win, &ops,
                        &value_type, &scale, &bias, &y, &ldy, &out, &n_groups, &work, &threads))
    return nullptr;
  if (value_type != 0 && value_type != 1) {
    PyErr_SetString(PyExc_ValueError, "value_type must be 0 (fp32) or 1 (int8)");
    return nullptr;
  }
  CsrGemvArgs a{ptr<const float>(x),     ldx,          batch,
                ptr<const int32_t>(op_start), ptr<const int32_t>(op_win), ptr<const void>(ops),
                ptr<const float>(scale), ptr<const float>(bias), ptr<float>(y),
                ldy,                     out};
  const int t = work * batch < kSerialWork ? 1 : threads;
  Py_BEGIN_ALLOW_THREADS
  run_parallel(csr_gemv_table[value_type], a, n_groups, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// csr_spmm(x, ldx, x_img, rowptr, cols, idx_bytes, values, value_type, scale, bias, y, y_img,
//          y_row, y_col, length, chunk, n_img, rows, nnz, threads)
PyObject* py_csr_spmm(PyObject*, PyObject* args) {
  unsigned long long x, rowptr, cols, values, scale, bias, y;
  long long ldx, x_img, y_img, y_row, y_col, length, chunk, n_img, rows, nnz;
  int idx_bytes, value_type, threads;
  if (!PyArg_ParseTuple(args, "KLLKKiKiKKKLLLLLLLLi", &x, &ldx, &x_img, &rowptr, &cols,
                        &idx_bytes, &values, &value_type, &scale, &bias, &y, &y_img, &y_row,
                        &y_col, &length, &chunk, &n_img, &rows, &nnz, &threads))
    return nullptr;
  if ((idx_bytes != 2 && idx_bytes != 4) || (value_type != 0 && value_type != 1) || chunk < 1) {
    PyErr_SetString(PyExc_ValueError,
                    "idx_bytes must be 2 or 4, value_type 0 (fp32) or 1 (int8), chunk >= 1");
    return nullptr;
  }
  const int64_t n_chunks = length / chunk > 1 ? length / chunk : 1;
  CsrSpmmArgs a{ptr<const float>(x), ldx, x_img, ptr<const int32_t>(rowptr),
                ptr<const void>(cols), ptr<const void>(values), ptr<const float>(scale),
                ptr<const float>(bias), ptr<float>(y), y_img, y_row, y_col, length, chunk,
                n_chunks, rows};
  const int t = n_img * nnz * length < kSerialWork ? 1 : threads;
  CsrSpmmFn fn = csr_spmm_table[value_type][idx_bytes == 2 ? 0 : 1];
  Py_BEGIN_ALLOW_THREADS
  run_parallel(fn, a, n_img * n_chunks * rows, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// depthwise(x, weight, bias, y, n_planes, channels, h, w, oh, ow, stride, threads)
PyObject* py_depthwise(PyObject*, PyObject* args) {
  unsigned long long x, weight, bias, y;
  long long planes, channels, h, w, oh, ow, stride;
  int threads;
  if (!PyArg_ParseTuple(args, "KKKKLLLLLLLi", &x, &weight, &bias, &y, &planes, &channels, &h,
                        &w, &oh, &ow, &stride, &threads))
    return nullptr;
  if (stride != 1 && stride != 2) {
    PyErr_SetString(PyExc_ValueError, "stride must be 1 or 2");
    return nullptr;
  }
  DwArgs a{ptr<const float>(x), ptr<const float>(weight), ptr<const float>(bias), ptr<float>(y),
           channels, h, w, oh, ow, stride};
  const int t = planes * oh * ow * 9 < kSerialWork ? 1 : threads;
  auto fn = dw_generic;
#ifdef SST_X86
  if (has_avx2) fn = dw_avx2;
#endif
  Py_BEGIN_ALLOW_THREADS
  run_parallel(fn, a, planes, t);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

void transpose_scalar(const float* s, int64_t rows, int64_t cols, float* d, int64_t r0, int64_t r1,
                      int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) d[c * rows + r] = s[r * cols + c];
}

#ifdef SST_X86
// 8x8 blocks through registers (unpack, shuffle, lane permute), edges scalar.
SST_AVX2 void transpose_avx2(const float* s, int64_t rows, int64_t cols, float* d) {
  const int64_t rb = rows - rows % 8, cb = cols - cols % 8;
  for (int64_t r = 0; r < rb; r += 8) {
    for (int64_t c = 0; c < cb; c += 8) {
      __m256 v[8], t[8];
      for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(s + (r + i) * cols + c);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        v[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        v[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        v[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        v[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(d + (c + i) * rows + r, _mm256_permute2f128_ps(v[i], v[i + 4], 0x20));
        _mm256_storeu_ps(d + (c + i + 4) * rows + r, _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
      }
    }
  }
  transpose_scalar(s, rows, cols, d, 0, rb, cb, cols);
  transpose_scalar(s, rows, cols, d, rb, rows, 0, cols);
}
#endif

// transpose(src, rows, cols, dst): dst (cols, rows) = src (rows, cols)^T (torch's strided
// copy is several times slower when one side is a few rows).
PyObject* py_transpose(PyObject*, PyObject* args) {
  unsigned long long src, dst;
  long long rows, cols;
  if (!PyArg_ParseTuple(args, "KLLK", &src, &rows, &cols, &dst)) return nullptr;
  const float* s = ptr<const float>(src);
  float* d = ptr<float>(dst);
  Py_BEGIN_ALLOW_THREADS
#ifdef SST_X86
  if (has_avx2)
    transpose_avx2(s, rows, cols, d);
  else
#endif
    transpose_scalar(s, rows, cols, d, 0, rows, 0, cols);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* py_isa(PyObject*, PyObject*) { return PyUnicode_FromString(isa_name); }

PyObject* py_has_perm(PyObject*, PyObject*) { return PyBool_FromLong(has_avx512); }

PyObject* py_openmp(PyObject*, PyObject*) {
#ifdef _OPENMP
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"gemv", py_gemv, METH_VARARGS, "Condensed matrix times rows of x (scalar loads)."},
    {"perm", py_perm, METH_VARARGS, "Windowed layout times a few rows of x (AVX-512)."},
    {"spmm", py_spmm, METH_VARARGS, "Condensed matrix times column blocks of x."},
    {"csr_gemv", py_csr_gemv, METH_VARARGS, "Windowed CSR layout times a few rows of x."},
    {"csr_spmm", py_csr_spmm, METH_VARARGS, "CSR matrix times column tiles of X."},
    {"depthwise", py_depthwise, METH_VARARGS, "Dense depthwise 3x3 conv (padding 1)."},
    {"transpose", py_transpose, METH_VARARGS, "Transposes a row-major float32 matrix."},
    {"isa", py_isa, METH_NOARGS, "Instruction set the kernels were dispatched to."},
    {"has_perm", py_has_perm, METH_NOARGS, "Whether the windowed (perm) kernel can run."},
    {"openmp", py_openmp, METH_NOARGS, "Whether the kernels were built with OpenMP."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu", "Condensed sparse CPU kernels.", -1, methods,
                      nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__cpu(void) {
  select_kernels();
  return PyModule_Create(&module);
}
