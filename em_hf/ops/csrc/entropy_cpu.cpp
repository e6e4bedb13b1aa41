// Fused token-entropy kernels for CPU, the CPU implementations of the em_hf ops (schemas.cpp
// defines them).
//
// For 2-D logits z [R, V] (last dimension contiguous) and a temperature T, with z' = z / T,
// m = max z', S = sum exp(z' - m), A = sum exp(z' - m) (z' - m):
//   entropy_forward:  H = log S - A / S (clamped at 0), lse = m + log S         (one online pass)
//   entropy_backward: dH/dz = -(1/T) p (log p + H) * grad_H, log p = z' - lse  (one pass)
// Entries at -inf have p = 0 and contribute nothing; a row that is entirely -inf has H = 0,
// lse = -inf and gradient 0. Accumulation is in float32 for float32, bfloat16 and float16 input.
// The forward pass reads each row once, in blocks that stay in L1, keeping a running maximum and
// rescaling S and A when it grows (online softmax). No [R, V] temporary is allocated.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "em_inf_cpu.h"
#include "vec_math.h"

namespace em_hf {

using vec::kLanes;
using vec::VecF;

namespace {

// Load `count` logits into `out` as float32 scaled by inv_t; pad to a multiple of kLanes with -inf.
template <typename scalar_t>
inline int64_t load_block(const scalar_t* src, int64_t count, float inv_t, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(src[i]) * inv_t;
  const int64_t padded = (count + kLanes - 1) / kLanes * kLanes;
  for (int64_t i = count; i < padded; ++i) out[i] = kNegInf;
  return padded;
}

template <typename scalar_t>
void forward_row(const scalar_t* row, int64_t vocab, float inv_t, float* buffer, float* entropy, float* lse) {
  RowStats stats;
  int64_t begin = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    // float32: whole vectors are read in place; only the tail goes through the buffer.
    const int64_t whole = vocab / kLanes * kLanes;
    for (; begin < whole; begin += kBlock) stats.add_block(row + begin, std::min(kBlock, whole - begin), inv_t);
    begin = whole;
  }
  for (; begin < vocab; begin += kBlock) {
    const int64_t count = std::min(kBlock, vocab - begin);
    const int64_t padded = load_block(row + begin, count, inv_t, buffer);
    stats.add_block(buffer, padded);
  }
  stats.finish(entropy, lse);
}

// grad[i] = scale * p * (log p + H) with log p = x[i] * inv_t - lse, for `n` floats (multiple of kLanes).
inline void gradient_block(const float* x, int64_t n, float inv_t, VecF lse_v, VecF h_v, VecF scale_v, float* out) {
  const VecF inv_t_v = vec::broadcast(inv_t);
  const VecF zero = vec::broadcast(0.0f);
  for (int64_t i = 0; i < n; i += kLanes) {
    const VecF log_p = vec::load(x + i) * inv_t_v - lse_v;
    const VecF p = vec::exp_nonpositive(log_p);
    const VecF g = scale_v * p * (log_p + h_v);
    vec::store(out + i, p > zero ? g : zero);  // masked entries: 0, not NaN
  }
}

template <typename scalar_t>
void backward_row(const scalar_t* row, int64_t vocab, float inv_t, float grad_h, float h, float row_lse,
                  float* buffer, scalar_t* grad_row) {
  if (row_lse == kNegInf || grad_h == 0.0f) {
    for (int64_t i = 0; i < vocab; ++i) grad_row[i] = static_cast<scalar_t>(0.0f);
    return;
  }
  const VecF lse_v = vec::broadcast(row_lse);
  const VecF h_v = vec::broadcast(h);
  const VecF scale_v = vec::broadcast(-inv_t * grad_h);
  int64_t begin = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    // float32: read and write whole vectors in place; only the tail goes through the buffer.
    begin = vocab / kLanes * kLanes;
    gradient_block(row, begin, inv_t, lse_v, h_v, scale_v, grad_row);
  }
  for (; begin < vocab; begin += kBlock) {
    const int64_t count = std::min(kBlock, vocab - begin);
    const int64_t padded = load_block(row + begin, count, 1.0f, buffer);
    gradient_block(buffer, padded, inv_t, lse_v, h_v, scale_v, buffer);
    for (int64_t i = 0; i < count; ++i) grad_row[begin + i] = static_cast<scalar_t>(buffer[i]);
  }
}

// The gradient is a fresh [R, V] buffer: first-touch page faults on 4 KiB pages cost about as much
// as computing it (~2 GB/s here). Ask Linux for transparent huge pages on it before the first write
// (a no-op where THP is off; torch itself does this only under THP_MEM_ALLOC_ENABLE=1).
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

int64_t grain_for(int64_t vocab) { return std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(vocab, 1)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> entropy_forward_cpu(const at::Tensor& logits_in, double temperature) {
  check_cpu_logits(logits_in, "em_hf::entropy_forward");
  TORCH_CHECK(temperature > 0, "em_hf::entropy_forward: temperature must be > 0");
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  const float inv_t = static_cast<float>(1.0 / temperature);
  at::Tensor entropy = at::empty({rows}, logits.options().dtype(at::kFloat));
  at::Tensor lse = at::empty({rows}, logits.options().dtype(at::kFloat));
  float* entropy_ptr = entropy.data_ptr<float>();
  float* lse_ptr = lse.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "entropy_forward_cpu", [&] {
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(vocab), [&](int64_t begin, int64_t end) {
      alignas(64) float buffer[kBlock];
      for (int64_t r = begin; r < end; ++r)
        forward_row(base + r * stride, vocab, inv_t, buffer, entropy_ptr + r, lse_ptr + r);
    });
  });
  return {entropy, lse};
}

at::Tensor entropy_backward_cpu(const at::Tensor& grad_entropy_in, const at::Tensor& logits_in,
                                const at::Tensor& entropy_in, const at::Tensor& lse_in, double temperature) {
  check_cpu_logits(logits_in, "em_hf::entropy_backward");
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  TORCH_CHECK(grad_entropy_in.numel() == rows && entropy_in.numel() == rows && lse_in.numel() == rows,
              "em_hf::entropy_backward: grad_entropy, entropy and lse must have one value per row");
  const at::Tensor grad_h = grad_entropy_in.to(at::kFloat).contiguous();
  const at::Tensor h = entropy_in.to(at::kFloat).contiguous();
  const at::Tensor lse = lse_in.to(at::kFloat).contiguous();
  const float inv_t = static_cast<float>(1.0 / temperature);
  at::Tensor grad = at::empty({rows, vocab}, logits.options());
  advise_huge_pages(grad.data_ptr(), static_cast<size_t>(grad.nbytes()));
  const float* grad_h_ptr = grad_h.const_data_ptr<float>();
  const float* h_ptr = h.const_data_ptr<float>();
  const float* lse_ptr = lse.const_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "entropy_backward_cpu", [&] {
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(vocab), [&](int64_t begin, int64_t end) {
      alignas(64) float buffer[kBlock];
      for (int64_t r = begin; r < end; ++r)
        backward_row(base + r * stride, vocab, inv_t, grad_h_ptr[r], h_ptr[r], lse_ptr[r], buffer, out + r * vocab);
    });
  });
  return grad;
}

}  // namespace em_hf

// TORCH_FN: the kernels are known at compile time, so the dispatcher calls them directly.
TORCH_LIBRARY_IMPL(em_hf, CPU, m) {
  m.impl("entropy_forward", TORCH_FN(em_hf::entropy_forward_cpu));
  m.impl("entropy_backward", TORCH_FN(em_hf::entropy_backward_cpu));
  m.impl("em_inf", TORCH_FN(em_hf::em_inf_cpu));
  m.impl("adaptive_temperature", TORCH_FN(em_hf::adaptive_temperature_cpu));
}
