// Fused token-entropy kernels for CPU, the CPU implementations of the em_hf ops (schemas.cpp
// defines them).
//
// For 2-D logits z [R, V] (last dimension contiguous) and a temperature T, with m = max z,
// d = (z - m) / T, S = sum exp(d), A = sum exp(d) d:
//   entropy_forward:  per row, the statistics of stats_layout.h: H = log S - A / S (clamped at 0),
//                     m, log S, and on request the self-certainty KL(U || p) = log S - mean(d) - log n
//                     over the n unmasked entries and the log-probability of a label,
//                     log p[y] = d_y - log S                                        (one online pass)
//   entropy_backward: dL/dz for L = gH * H + gSC * SC + gLP * log p[y]:
//                     (1/T) [ -gH p (log p + H) + gSC (p - 1[z finite] / n) + gLP (1[v = y] - p) ],
//                     log p = (z - m) / T - log S                                   (one pass)
// The maximum is subtracted before the division by T, so small temperatures and large logits lose
// no precision. Entries at -inf have p = 0 and contribute nothing; a row that is entirely -inf has
// H = 0, m = log S = -inf and gradient 0. Accumulation is in float32 for float32, bfloat16 and
// float16 input. The forward pass reads each row once, in blocks that stay in L1, keeping a running
// maximum and rescaling S and A when it grows (online softmax). No [R, V] temporary is allocated.
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
#include "stats_layout.h"
#include "vec_math.h"

namespace em_hf {

using vec::kLanes;
using vec::VecF;

namespace {

// Load `count` logits into `out` as float32; pad to a multiple of kLanes with -inf.
template <typename scalar_t>
inline int64_t load_block(const scalar_t* src, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(src[i]);
  const int64_t padded = (count + kLanes - 1) / kLanes * kLanes;
  for (int64_t i = count; i < padded; ++i) out[i] = kNegInf;
  return padded;
}

// The statistics of stats_layout.h for one row; `label` < 0 means none.
template <bool kExtras, typename scalar_t>
void forward_row(const scalar_t* row, int64_t vocab, float inv_t, int64_t label, float* buffer, float* out) {
  RowStats stats;
  int64_t begin = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    // float32: whole vectors are read in place; only the tail goes through the buffer.
    const int64_t whole = vocab / kLanes * kLanes;
    for (; begin < whole; begin += kBlock)
      stats.add_block<kExtras>(row + begin, std::min(kBlock, whole - begin), inv_t);
    begin = whole;
  }
  for (; begin < vocab; begin += kBlock) {
    const int64_t count = std::min(kBlock, vocab - begin);
    const int64_t padded = load_block(row + begin, count, buffer);
    stats.add_block<kExtras>(buffer, padded, inv_t);
  }
  float lse;
  stats.finish(out + stats::kEntropy, &lse, inv_t);
  const bool empty = stats.empty();
  const float log_s = empty ? kNegInf : std::log(stats.s);
  out[stats::kMax] = stats.m;
  out[stats::kLogSum] = log_s;
  out[stats::kSelfCertainty] = kExtras ? stats.self_certainty() : 0.0f;
  out[stats::kCount] = kExtras ? stats.n : 0.0f;
  float label_logprob = 0.0f;
  if (label >= 0) {
    const float z = static_cast<float>(row[label]);
    label_logprob = empty || z == kNegInf ? kNegInf : (z - stats.m) * inv_t - log_s;
  }
  out[stats::kLabelLogProb] = label_logprob;
}

// The per-row constants of the gradient
//   g = scale_h p (log p + H) + scale_p p + (z finite ? scale_c : 0),  log p = (z - m) inv_t - log S.
struct GradRow {
  float m, log_s, h, scale_h, scale_p, scale_c;
};

// g for `n` floats (a multiple of kLanes) of the row, raw logits x.
inline void gradient_block(const float* x, int64_t n, float inv_t, const GradRow& r, float* out) {
  const VecF inv_t_v = vec::broadcast(inv_t);
  const VecF zero = vec::broadcast(0.0f);
  const VecF neg_inf = vec::broadcast(kNegInf);
  const VecF m_v = vec::broadcast(r.m), log_s_v = vec::broadcast(r.log_s), h_v = vec::broadcast(r.h);
  const VecF scale_h = vec::broadcast(r.scale_h), scale_p = vec::broadcast(r.scale_p);
  const VecF scale_c = vec::broadcast(r.scale_c);
  for (int64_t i = 0; i < n; i += kLanes) {
    const VecF xi = vec::load(x + i);
    const VecF log_p = (xi - m_v) * inv_t_v - log_s_v;
    const VecF p = vec::exp_nonpositive(log_p);
    const VecF entropy_term = p > zero ? scale_h * (p * (log_p + h_v)) : zero;  // p = 0: 0, not NaN
    vec::store(out + i, entropy_term + scale_p * p + (xi > neg_inf ? scale_c : zero));
  }
}

template <typename scalar_t>
void backward_row(const scalar_t* row, int64_t vocab, float inv_t, const float* grads, const float* stats_row,
                  int64_t label, float* buffer, scalar_t* grad_row) {
  const float grad_h = grads[0], grad_sc = grads[1], grad_lp = label >= 0 ? grads[2] : 0.0f;
  const float count = stats_row[stats::kCount];
  if (stats_row[stats::kMax] == kNegInf || (grad_h == 0.0f && grad_sc == 0.0f && grad_lp == 0.0f)) {
    for (int64_t i = 0; i < vocab; ++i) grad_row[i] = static_cast<scalar_t>(0.0f);
    return;
  }
  const GradRow r{stats_row[stats::kMax],
                  stats_row[stats::kLogSum],
                  stats_row[stats::kEntropy],
                  -inv_t * grad_h,
                  inv_t * (grad_sc - grad_lp),
                  count > 0.0f ? -inv_t * grad_sc / count : 0.0f};
  int64_t begin = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    // float32: read and write whole vectors in place; only the tail goes through the buffer.
    begin = vocab / kLanes * kLanes;
    gradient_block(row, begin, inv_t, r, grad_row);
  }
  for (; begin < vocab; begin += kBlock) {
    const int64_t count_block = std::min(kBlock, vocab - begin);
    const int64_t padded = load_block(row + begin, count_block, buffer);
    gradient_block(buffer, padded, inv_t, r, buffer);
    for (int64_t i = 0; i < count_block; ++i) grad_row[begin + i] = static_cast<scalar_t>(buffer[i]);
  }
  // d log p[y] / dz_y has the extra + 1/T (the one-hot); none for a masked label (log p = -inf).
  if (label >= 0 && grad_lp != 0.0f && static_cast<float>(row[label]) != kNegInf) {
    grad_row[label] = static_cast<scalar_t>(static_cast<float>(grad_row[label]) + inv_t * grad_lp);
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

// One label per row (int64, -100 for none) or an undefined tensor.
at::Tensor checked_labels(const c10::optional<at::Tensor>& labels, int64_t rows, int64_t vocab, const char* op) {
  if (!labels.has_value() || !labels->defined()) return at::Tensor();
  TORCH_CHECK(labels->scalar_type() == at::kLong, op, ": labels must be int64");
  TORCH_CHECK(labels->numel() == rows, op, ": labels must have one value per row");
  at::Tensor out = labels->to(at::kCPU).contiguous();
  const int64_t* ptr = out.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(ptr[r] == stats::kIgnoreIndex || (ptr[r] >= 0 && ptr[r] < vocab), op, ": label ", ptr[r],
                " is not in [0, ", vocab, ") nor -100");
  return out;
}

inline int64_t label_of(const int64_t* labels, int64_t r) {
  return labels == nullptr || labels[r] == stats::kIgnoreIndex ? -1 : labels[r];
}

at::Tensor entropy_forward_cpu(const at::Tensor& logits_in, double temperature,
                               const c10::optional<at::Tensor>& labels_in, bool self_certainty) {
  const char* op = "em_hf::entropy_forward";
  check_cpu_logits(logits_in, op);
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0");
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  const at::Tensor labels = checked_labels(labels_in, rows, vocab, op);
  const int64_t* label_ptr = labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr;
  const float inv_t = static_cast<float>(1.0 / temperature);
  at::Tensor out = at::empty({rows, stats::kColumns}, logits.options().dtype(at::kFloat));
  float* out_ptr = out.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "entropy_forward_cpu", [&] {
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(vocab), [&](int64_t begin, int64_t end) {
      alignas(64) float buffer[kBlock];
      for (int64_t r = begin; r < end; ++r) {
        float* row_out = out_ptr + r * stats::kColumns;
        const int64_t label = label_of(label_ptr, r);
        if (self_certainty) {
          forward_row<true>(base + r * stride, vocab, inv_t, label, buffer, row_out);
        } else {
          forward_row<false>(base + r * stride, vocab, inv_t, label, buffer, row_out);
        }
      }
    });
  });
  return out;
}

at::Tensor entropy_backward_cpu(const at::Tensor& grads_in, const at::Tensor& logits_in, const at::Tensor& stats_in,
                                double temperature, const c10::optional<at::Tensor>& labels_in) {
  const char* op = "em_hf::entropy_backward";
  check_cpu_logits(logits_in, op);
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0");
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  TORCH_CHECK(grads_in.numel() == rows * stats::kGradColumns, op, ": grads must be [rows, 3]");
  TORCH_CHECK(stats_in.numel() == rows * stats::kColumns, op, ": stats must be [rows, 6] (entropy_forward's)");
  const at::Tensor grads = grads_in.to(at::kFloat).contiguous();
  const at::Tensor row_stats = stats_in.to(at::kFloat).contiguous();
  const at::Tensor labels = checked_labels(labels_in, rows, vocab, op);
  const int64_t* label_ptr = labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr;
  const float inv_t = static_cast<float>(1.0 / temperature);
  at::Tensor grad = at::empty({rows, vocab}, logits.options());
  advise_huge_pages(grad.data_ptr(), static_cast<size_t>(grad.nbytes()));
  const float* grads_ptr = grads.const_data_ptr<float>();
  const float* stats_ptr = row_stats.const_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "entropy_backward_cpu", [&] {
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(vocab), [&](int64_t begin, int64_t end) {
      alignas(64) float buffer[kBlock];
      for (int64_t r = begin; r < end; ++r)
        backward_row(base + r * stride, vocab, inv_t, grads_ptr + r * stats::kGradColumns,
                     stats_ptr + r * stats::kColumns, label_of(label_ptr, r), buffer, out + r * vocab);
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
