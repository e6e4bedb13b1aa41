// CUDA kernels of the em_hf ops: token entropy forward/backward, fused EM-INF and adaptive
// temperature. They mirror the CPU kernels (entropy_cpu.cpp, em_inf_cpu.cpp, vec_math.h):
//
//   m = max z,  d = (z - m) * inv_t,  S = sum exp(d),  A = sum exp(d) d,  D = sum d,  n = count
//   H = log S - A / S (clamped at 0),  SC = log S - D / n - log n,  log p = d - log S,
//   dL/dz = inv_t [-gH p (log p + H) + gSC (p - 1[z finite] / n) + gLP (1[v = y] - p)]
// (the statistics of stats_layout.h; the maximum is subtracted before the scaling by 1/T).
//
// Layout: a row is handled by one thread block (one warp for vocabularies up to
// kWarpRowMaxVocab). Its threads walk the row in chunks of kChunk elements; chunk boundaries sit
// on the 16-byte boundaries of the row's memory, so every full chunk is one (bf16/fp16) or two
// (fp32) 16-byte loads, and only the first and last chunk of a row are partial. Each thread keeps
// an online triple (m, S, A) in float32, rescaled when its maximum grows; the triples of the
// threads are merged by warp shuffles and shared memory. Nothing of size [rows, vocab] is
// allocated, except em_inf's workspace, which the caller provides.
//
// Non-finite values: -inf entries have p = 0 and add nothing (products that could be -inf * 0
// are masked); NaN, or +inf (which gives inf - inf), makes S and so H NaN, which the Python side
// reports. exp is __expf (hardware ex2; CUDA documents at most 2 + 1.17 |x| ulp, so the terms
// with x near 0, which dominate S, A and the gradient, are accurate to a few ulp).
#include "entropy_cuda_kernels.h"
#include "stats_layout.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

namespace em_hf {
namespace cuda {

namespace {

constexpr int kChunk = 8;                   // elements per thread and iteration
constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kWarpRowMaxVocab = 1024;  // up to this vocabulary a warp handles a row...
constexpr int kRowsPerBlock = 8;            // ...and a block holds 8 of them
constexpr int kMaxRowThreads = 512;         // entropy forward/backward: threads of a row's block
constexpr int kOptimThreads = 512;          // em_inf, adaptive_temperature: threads of a row's block
constexpr float kNegInf = -INFINITY;

// ---- element conversion and chunked row access ----------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }  // nearest
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }  // nearest

// kChunk elements, loaded or stored as one piece (16 or 32 bytes, vectorized) when aligned.
template <typename T>
struct alignas(16) Pack {
  T v[kChunk];
};

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Elements of `row` that precede it in its 16-byte segment: chunk c of the row starts at element
// c * kChunk - chunk_offset(row), which is 16-byte aligned.
template <typename T>
__device__ __forceinline__ int64_t chunk_offset(const T* row) {
  return static_cast<int64_t>((reinterpret_cast<uintptr_t>(row) / sizeof(T)) % (16 / sizeof(T)));
}

template <typename T>
__device__ __forceinline__ int64_t chunk_count(int64_t vocab, int64_t offset) {
  return (vocab + offset + kChunk - 1) / kChunk;
}

// x[k] = row[start + k] in float32 where 0 <= start + k < n, else `fill`.
template <typename T>
__device__ __forceinline__ void load_chunk(const T* __restrict__ row, int64_t start, int64_t n, float fill,
                                           float (&x)[kChunk]) {
  if (start >= 0 && start + kChunk <= n && aligned16(row + start)) {
    const Pack<T> pack = *reinterpret_cast<const Pack<T>*>(row + start);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) x[k] = to_float(pack.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      const int64_t i = start + k;
      x[k] = i >= 0 && i < n ? to_float(row[i]) : fill;
    }
  }
}

// row[start + k] = x[k] in T where 0 <= start + k < n. `row` need not share the alignment of the
// row the chunks were cut from (a strided input, a contiguous output): misaligned chunks are
// written element by element.
template <typename T>
__device__ __forceinline__ void store_chunk(T* __restrict__ row, int64_t start, int64_t n, const float (&x)[kChunk]) {
  if (start >= 0 && start + kChunk <= n && aligned16(row + start)) {
    Pack<T> pack;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) pack.v[k] = from_float<T>(x[k]);
    *reinterpret_cast<Pack<T>*>(row + start) = pack;
  } else {
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      const int64_t i = start + k;
      if (i >= 0 && i < n) row[i] = from_float<T>(x[k]);
    }
  }
}

// ---- online row statistics ------------------------------------------------------------------

// Running maximum m (in the units of the values x), and with d = (x - m) * scale: S = sum exp(d),
// A = sum exp(d) d, D = sum d and n = count over the finite x, over part of a row. While m = -inf,
// A = D = n = 0 and S is 0, or NaN once a NaN was seen. m itself is never NaN (fmaxf skips NaN).
struct Stats {
  float m, s, a, d, n, scale;

  __device__ __forceinline__ static Stats empty(float scale) { return {kNegInf, 0.0f, 0.0f, 0.0f, 0.0f, scale}; }

  // Moves the reference point to new_m >= m: with t = (m - new_m) * scale, S' = e^t S,
  // A' = e^t (A + t S), D' = D + n t (t = -inf when it overflows: S' = A' = 0, D' = -inf).
  __device__ __forceinline__ void rebase(float new_m) {
    if (m != new_m && m != kNegInf) {
      const float t = (m - new_m) * scale;
      const float f = __expf(t);
      a = f > 0.0f ? f * (a + t * s) : 0.0f;
      s = f * s;
      if (n > 0.0f) d += n * t;
    }
    m = new_m;
  }

  // kExtras: also D and n (the entropy forward); the optimizers leave them 0.
  template <bool kExtras>
  __device__ __forceinline__ void add(const float (&x)[kChunk]) {
    float chunk_max = kNegInf;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) chunk_max = fmaxf(chunk_max, x[k]);
    if (chunk_max > m) rebase(chunk_max);
    // While m = -inf every x is -inf or NaN: shifting by 0 avoids -inf - (-inf) = NaN there.
    const float shift = m == kNegInf ? 0.0f : m;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      const float dk = (x[k] - shift) * scale;
      const float e = __expf(dk);
      s += e;
      a += e > 0.0f ? dk * e : 0.0f;  // dk = -inf gives e = 0, and -inf * 0 would be NaN
      if constexpr (kExtras) {
        const bool finite = x[k] > kNegInf;  // masked entries are not part of "uniform"
        d += finite ? dk : 0.0f;
        n += finite ? 1.0f : 0.0f;
      }
    }
  }

  // Exactly commutative (fmaxf, and each side rebased on its own before one addition), so a
  // shuffle butterfly leaves the same bits in every lane.
  __device__ __forceinline__ void merge(Stats other) {
    const float new_m = fmaxf(m, other.m);
    rebase(new_m);
    other.rebase(new_m);
    s += other.s;
    a += other.a;
    d += other.d;
    n += other.n;
  }

  __device__ __forceinline__ bool massless() const { return m == kNegInf && s == 0.0f; }
};

struct RowResult {
  float entropy, lse;
};

// H = log S - A / S clamped at 0 (NaN stays NaN), lse = m * scale + log S; an all -inf row: 0 and -inf.
__device__ __forceinline__ RowResult finish(const Stats& t) {
  if (t.massless()) return {0.0f, kNegInf};
  const float log_s = logf(t.s);
  const float h = log_s - t.a / t.s;
  return {h < 0.0f ? 0.0f : h, t.m * t.scale + log_s};
}

// Merged statistics of a warp, in every lane (D and n only with kExtras).
template <bool kExtras>
__device__ __forceinline__ Stats warp_reduce(Stats t) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    Stats other{__shfl_xor_sync(kFullMask, t.m, offset), __shfl_xor_sync(kFullMask, t.s, offset),
                __shfl_xor_sync(kFullMask, t.a, offset), 0.0f, 0.0f, t.scale};
    if constexpr (kExtras) {
      other.d = __shfl_xor_sync(kFullMask, t.d, offset);
      other.n = __shfl_xor_sync(kFullMask, t.n, offset);
    }
    t.merge(other);
  }
  return t;
}

// Merged statistics of the block, in every thread, bitwise identical (every warp reduces the same
// per-warp values), so all threads take the same branches on H. blockDim.x: a multiple of 32.
template <bool kExtras = false>
__device__ __forceinline__ Stats block_reduce(Stats t, Stats* scratch) {
  t = warp_reduce<kExtras>(t);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) scratch[warp] = t;
  __syncthreads();
  t = lane < static_cast<int>(blockDim.x / kWarp) ? scratch[lane] : Stats::empty(t.scale);
  t = warp_reduce<kExtras>(t);
  __syncthreads();  // scratch is free again
  return t;
}

// This thread's share of a row's statistics at `scale`: chunks first, first + step, ... of the row,
// each element mapped by `map` (as it is, or shifted and divided by tau) before it is added.
template <bool kExtras = false, typename T, typename Map>
__device__ __forceinline__ Stats thread_stats(const T* __restrict__ row, int64_t vocab, int64_t offset,
                                              int64_t chunks, int64_t first, int64_t step, float scale, Map map) {
  Stats t = Stats::empty(scale);
  for (int64_t c = first; c < chunks; c += step) {
    float x[kChunk];
    load_chunk(row, c * kChunk - offset, vocab, kNegInf, x);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) x[k] = map(x[k]);
    t.add<kExtras>(x);
  }
  return t;
}

// The threads that share a row: a warp (kWarpPerRow, kRowsPerBlock rows per block) or the block.
template <bool kWarpPerRow>
struct RowGroup {
  int64_t row;
  int rank, size;

  __device__ __forceinline__ RowGroup() {
    if constexpr (kWarpPerRow) {
      row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
      rank = threadIdx.x % kWarp;
      size = kWarp;
    } else {
      row = blockIdx.x;
      rank = threadIdx.x;
      size = blockDim.x;
    }
  }

  template <bool kExtras>
  __device__ __forceinline__ Stats reduce(Stats t, Stats* scratch) const {
    if constexpr (kWarpPerRow) {
      return warp_reduce<kExtras>(t);
    } else {
      return block_reduce<kExtras>(t, scratch);
    }
  }
};

// ---- kernels --------------------------------------------------------------------------------

// The label of row r, or -1 for none (no labels, or the ignore index).
__device__ __forceinline__ int64_t row_label(const int64_t* __restrict__ labels, int64_t r) {
  if (labels == nullptr) return -1;
  const int64_t y = labels[r];
  return y == stats::kIgnoreIndex ? -1 : y;
}

template <typename T, bool kWarpPerRow>
__global__ void __launch_bounds__(kMaxRowThreads)
    entropy_forward_kernel(const T* __restrict__ logits, int64_t rows, int64_t vocab, int64_t row_stride,
                           float inv_t, const int64_t* __restrict__ labels, bool self_certainty,
                           float* __restrict__ out) {
  __shared__ Stats scratch[kWarp];
  const RowGroup<kWarpPerRow> group;
  if (group.row >= rows) return;  // whole warps of the last block in warp mode; no barrier follows
  const T* row = logits + group.row * row_stride;
  const int64_t offset = chunk_offset(row);
  const int64_t chunks = chunk_count<T>(vocab, offset);
  const Stats t = group.template reduce<true>(
      thread_stats<true>(row, vocab, offset, chunks, group.rank, group.size, inv_t, [](float x) { return x; }),
      scratch);
  if (group.rank == 0) {
    const RowResult result = finish(t);
    const bool massless = t.massless();
    const float log_s = massless ? kNegInf : logf(t.s);
    float* o = out + group.row * stats::kColumns;
    o[stats::kEntropy] = result.entropy;
    o[stats::kMax] = t.m;
    o[stats::kLogSum] = log_s;
    float certainty = 0.0f;
    if (self_certainty && !massless && t.n > 0.0f) {
      certainty = log_s - t.d / t.n - logf(t.n);
      certainty = certainty < 0.0f ? 0.0f : certainty;  // KL >= 0; rounding may leave -1e-7
    }
    o[stats::kSelfCertainty] = certainty;
    o[stats::kCount] = self_certainty ? t.n : 0.0f;
    float label_logprob = 0.0f;
    const int64_t y = row_label(labels, group.row);
    if (y >= 0) {
      const float z = to_float(row[y]);
      label_logprob = massless || z == kNegInf ? kNegInf : (z - t.m) * inv_t - log_s;
    }
    o[stats::kLabelLogProb] = label_logprob;
  }
}

template <typename T, bool kWarpPerRow>
__global__ void __launch_bounds__(kMaxRowThreads)
    entropy_backward_kernel(const float* __restrict__ grads, const T* __restrict__ logits, int64_t rows,
                            int64_t vocab, int64_t row_stride, const float* __restrict__ row_stats,
                            const int64_t* __restrict__ labels, float inv_t, T* __restrict__ grad) {
  const RowGroup<kWarpPerRow> group;
  if (group.row >= rows) return;
  const T* row = logits + group.row * row_stride;
  T* out = grad + group.row * vocab;
  const float* st = row_stats + group.row * stats::kColumns;
  const float* g = grads + group.row * stats::kGradColumns;
  const int64_t y = row_label(labels, group.row);
  const float grad_h = g[0], grad_sc = g[1], grad_lp = y >= 0 ? g[2] : 0.0f;
  const float m = st[stats::kMax], log_s = st[stats::kLogSum], h = st[stats::kEntropy], n = st[stats::kCount];
  // An all -inf row, or one with nothing to propagate (padding): zeros, without reading the row.
  const bool zero_row = m == kNegInf || (grad_h == 0.0f && grad_sc == 0.0f && grad_lp == 0.0f);
  const float scale_h = -inv_t * grad_h, scale_p = inv_t * (grad_sc - grad_lp);
  const float scale_c = n > 0.0f ? -inv_t * grad_sc / n : 0.0f;
  // d log p[y] / dz_y has the extra + 1/T (the one-hot); none for a masked label (log p = -inf).
  const float one_hot = inv_t * grad_lp;
  const int64_t offset = chunk_offset(row);
  const int64_t chunks = chunk_count<T>(vocab, offset);
  for (int64_t c = group.rank; c < chunks; c += group.size) {
    const int64_t start = c * kChunk - offset;
    float x[kChunk] = {};
    if (!zero_row) {
      load_chunk(row, start, vocab, kNegInf, x);
      const int label_k = y >= start && y < start + kChunk ? static_cast<int>(y - start) : -1;
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const bool finite = x[k] > kNegInf;
        const float log_p = (x[k] - m) * inv_t - log_s;
        const float p = __expf(log_p);
        float value = p > 0.0f ? scale_h * (p * (log_p + h)) : 0.0f;  // p = 0 (z = -inf): 0, not 0 * -inf
        value += scale_p * p + (finite ? scale_c : 0.0f);
        if (k == label_k && finite) value += one_hot;
        x[k] = value;
      }
    }
    store_chunk(out, start, vocab, x);
  }
}

// One block per row. Each step is one pass over the row: gradient, optimizer update and the
// statistics of the updated row (for the next step's stop test and p), as in em_inf_cpu.cpp. The
// first step starts from z = logits and zero moments without reading the workspace; the last
// allowed step does not write it. Every step writes `out`, so it holds z when the loop stops.
template <typename T>
__global__ void __launch_bounds__(kOptimThreads)
    em_inf_kernel(const T* __restrict__ logits, int64_t rows, int64_t vocab, int64_t row_stride, float threshold,
                  int64_t n_steps, float lr, float kl_weight, bool adam, float beta1, float beta2, float eps,
                  float* __restrict__ workspace, T* __restrict__ out) {
  __shared__ Stats scratch[kWarp];
  const int64_t r = blockIdx.x;
  const T* in = logits + r * row_stride;
  T* out_row = out + r * vocab;
  float* z_row = workspace + r * vocab;  // workspace: [3][rows][vocab] = z, exp_avg, exp_avg_sq
  float* exp_avg_row = z_row + rows * vocab;
  float* exp_avg_sq_row = exp_avg_row + rows * vocab;
  const int64_t offset = chunk_offset(in);
  const int64_t chunks = chunk_count<T>(vocab, offset);

  const Stats t =
      thread_stats(in, vocab, offset, chunks, threadIdx.x, blockDim.x, 1.0f, [](float x) { return x; });
  RowResult current = finish(block_reduce(t, scratch));
  if (!(current.entropy > threshold)) {  // at or below the threshold (or NaN): bitwise copy
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) out_row[i] = in[i];
    return;
  }

  const float lse_orig = current.lse;
  const float one_minus_b1 = 1.0f - beta1, one_minus_b2 = 1.0f - beta2;
  for (int64_t step = 1; step <= n_steps && current.entropy > threshold; ++step) {
    const bool first = step == 1, last = step == n_steps;
    // torch.optim.Adam: step_size = lr / (1 - beta1^t), denom = sqrt(v) / sqrt(1 - beta2^t) + eps.
    const float step_size = lr / (1.0f - powf(beta1, static_cast<float>(step)));
    const float inv_bias2_sqrt = 1.0f / sqrtf(1.0f - powf(beta2, static_cast<float>(step)));
    Stats next = Stats::empty(1.0f);
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      const int64_t start = c * kChunk - offset;
      float z_orig[kChunk], z[kChunk], exp_avg[kChunk], exp_avg_sq[kChunk];
      load_chunk(in, start, vocab, kNegInf, z_orig);
      if (first) {
#pragma unroll
        for (int k = 0; k < kChunk; ++k) {
          z[k] = z_orig[k];
          exp_avg[k] = exp_avg_sq[k] = 0.0f;
        }
      } else {
        load_chunk(z_row, start, vocab, kNegInf, z);
        if (adam) {
          load_chunk(exp_avg_row, start, vocab, 0.0f, exp_avg);
          load_chunk(exp_avg_sq_row, start, vocab, 0.0f, exp_avg_sq);
        }
      }
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        // dL/dz = -p (log p + H) + kl_weight (p - p_orig); the first term is 0 where p = 0.
        const float log_p = z[k] - current.lse;
        const float p = __expf(log_p);
        const float p_orig = __expf(z_orig[k] - lse_orig);
        float g = p > 0.0f ? -(p * (log_p + current.entropy)) : 0.0f;
        g += kl_weight * (p - p_orig);
        float updated;
        if (adam) {  // torch's operation order: exp_avg.lerp_(g, 1 - beta1), exp_avg_sq.mul_(beta2).addcmul_
          exp_avg[k] = exp_avg[k] + (g - exp_avg[k]) * one_minus_b1;
          exp_avg_sq[k] = exp_avg_sq[k] * beta2 + one_minus_b2 * g * g;
          const float denom = sqrtf(exp_avg_sq[k]) * inv_bias2_sqrt + eps;
          updated = z[k] - step_size * (exp_avg[k] / denom);
        } else {
          updated = z[k] - lr * g;
        }
        z[k] = z[k] == kNegInf ? z[k] : updated;  // masked entries stay -inf
      }
      store_chunk(out_row, start, vocab, z);
      if (!last) {
        store_chunk(z_row, start, vocab, z);
        if (adam) {
          store_chunk(exp_avg_row, start, vocab, exp_avg);
          store_chunk(exp_avg_sq_row, start, vocab, exp_avg_sq);
        }
      }
      next.add<false>(z);
    }
    current = finish(block_reduce(next, scratch));
  }
}

// H(softmax((z - z_max) / divisor)) of one row, in every thread of the block. The maximum is
// subtracted first (a small divisor then gives -inf, p = 0, where z / divisor would overflow).
template <typename T>
__device__ float row_entropy(const T* row, int64_t vocab, int64_t offset, int64_t chunks, float z_max,
                             float divisor, Stats* scratch) {
  // A division, as on CPU, not * (1 / divisor).
  const Stats t = thread_stats(row, vocab, offset, chunks, threadIdx.x, blockDim.x, 1.0f,
                               [=](float x) { return (x - z_max) / divisor; });
  return finish(block_reduce(t, scratch)).entropy;
}

// One block per row: bisection of tau in float64 on the float32 entropy of z / tau (Appendix B,
// Algorithm 1), the same sequence of operations as adaptive_temperature_cpu.
template <typename T>
__global__ void __launch_bounds__(kOptimThreads)
    adaptive_temperature_kernel(const T* __restrict__ logits, int64_t vocab, int64_t row_stride, double alpha,
                                double threshold, double tau_min, double tau_max, int64_t max_iter, double tol,
                                double* __restrict__ tau) {
  __shared__ Stats scratch[kWarp];
  const T* row = logits + static_cast<int64_t>(blockIdx.x) * row_stride;
  const int64_t offset = chunk_offset(row);
  const int64_t chunks = chunk_count<T>(vocab, offset);
  const Stats first = block_reduce(
      thread_stats(row, vocab, offset, chunks, threadIdx.x, blockDim.x, 1.0f, [](float x) { return x; }), scratch);
  const double h0 = finish(first).entropy;
  const float z_max = first.m;
  double result = 1.0;  // rows at or below the threshold (or NaN) keep temperature 1
  if (h0 > threshold) {
    const double target = fmax(threshold, alpha * h0);
    double low = tau_min, high = tau_max, mid = 1.0;
    for (int64_t it = 0; it < max_iter; ++it) {
      mid = (low + high) / 2;
      const double h = row_entropy(row, vocab, offset, chunks, z_max, static_cast<float>(mid), scratch);
      if (fabs(h - target) < tol) break;
      if (h < target) {
        low = mid;
      } else {
        high = mid;
      }
    }
    result = mid;
  }
  if (threadIdx.x == 0) tau[blockIdx.x] = result;
}

// ---- launch helpers -------------------------------------------------------------------------

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with the element type named by `dtype`.
template <typename F>
cudaError_t dispatch(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat32:
      return f(TypeTag<float>{});
    case Dtype::kBFloat16:
      return f(TypeTag<__nv_bfloat16>{});
    case Dtype::kFloat16:
      return f(TypeTag<__half>{});
  }
  return cudaErrorInvalidValue;
}

// rows must fit the grid's x dimension (one block per row at most).
bool valid_shape(int64_t rows, int64_t vocab, int64_t row_stride) {
  return rows >= 0 && rows <= INT_MAX && vocab > 0 && row_stride >= 0;
}

// Threads of a row's block in the entropy kernels: more for long rows, up to kMaxRowThreads.
int row_threads(int64_t vocab) { return vocab <= 16384 ? 256 : kMaxRowThreads; }

}  // namespace

cudaError_t entropy_forward(const void* logits, Dtype dtype, int64_t rows, int64_t vocab, int64_t row_stride,
                            float inv_temperature, const int64_t* labels, bool self_certainty, float* stats,
                            cudaStream_t stream) {
  if (!valid_shape(rows, vocab, row_stride)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(logits);
    if (vocab <= kWarpRowMaxVocab) {
      const auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
      entropy_forward_kernel<T, true><<<blocks, kRowsPerBlock * kWarp, 0, stream>>>(
          x, rows, vocab, row_stride, inv_temperature, labels, self_certainty, stats);
    } else {
      entropy_forward_kernel<T, false><<<static_cast<unsigned>(rows), row_threads(vocab), 0, stream>>>(
          x, rows, vocab, row_stride, inv_temperature, labels, self_certainty, stats);
    }
    return cudaGetLastError();
  });
}

cudaError_t entropy_backward(const float* grads, const void* logits, Dtype dtype, int64_t rows, int64_t vocab,
                             int64_t row_stride, const float* stats, const int64_t* labels, float inv_temperature,
                             void* grad, cudaStream_t stream) {
  if (!valid_shape(rows, vocab, row_stride)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(logits);
    T* g = static_cast<T*>(grad);
    if (vocab <= kWarpRowMaxVocab) {
      const auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
      entropy_backward_kernel<T, true><<<blocks, kRowsPerBlock * kWarp, 0, stream>>>(
          grads, x, rows, vocab, row_stride, stats, labels, inv_temperature, g);
    } else {
      entropy_backward_kernel<T, false><<<static_cast<unsigned>(rows), row_threads(vocab), 0, stream>>>(
          grads, x, rows, vocab, row_stride, stats, labels, inv_temperature, g);
    }
    return cudaGetLastError();
  });
}

cudaError_t em_inf(const void* logits, Dtype dtype, int64_t rows, int64_t vocab, int64_t row_stride,
                   float threshold, int64_t n_steps, float lr, float kl_weight, bool adam, float beta1,
                   float beta2, float eps, float* workspace, void* out, cudaStream_t stream) {
  if (!valid_shape(rows, vocab, row_stride) || n_steps < 1) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (workspace == nullptr) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    em_inf_kernel<T><<<static_cast<unsigned>(rows), kOptimThreads, 0, stream>>>(
        static_cast<const T*>(logits), rows, vocab, row_stride, threshold, n_steps, lr, kl_weight, adam, beta1,
        beta2, eps, workspace, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

cudaError_t adaptive_temperature(const void* logits, Dtype dtype, int64_t rows, int64_t vocab, int64_t row_stride,
                                 double alpha, double threshold, double tau_min, double tau_max, int64_t max_iter,
                                 double tol, double* tau, cudaStream_t stream) {
  if (!valid_shape(rows, vocab, row_stride)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    adaptive_temperature_kernel<T><<<static_cast<unsigned>(rows), kOptimThreads, 0, stream>>>(
        static_cast<const T*>(logits), vocab, row_stride, alpha, threshold, tau_min, tau_max, max_iter, tol, tau);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace em_hf
