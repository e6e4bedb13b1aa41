// Fused EM-INF ("The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning", section 4)
// and adaptive temperature (its Appendix B, Algorithm 1) on CPU.
//
// em_inf: per row of z [R, V], up to n_steps gradient steps on
//   L(z) = H(softmax(z)) + kl_weight * KL(p_orig || softmax(z)),
//   dL/dz = -p (log p + H) + kl_weight (p - p_orig),
// with Adam (torch.optim.Adam's update, same operation order) or SGD; a row stops for good as soon
// as its entropy is <= threshold (checked before every step). Each step is ONE pass over the row:
// the update of a block is followed at once by the statistics (max, sum exp, entropy) of the
// updated block, which the next step needs; p_orig is computed once. Rows are independent and run
// in parallel; the working memory is 4 floats per vocabulary entry per thread.
// adaptive_temperature: per row with H0 > threshold, bisection of tau in [tau_min, tau_max] until
// |H(softmax((z - max z) / tau)) - max(threshold, alpha H0)| < tol or max_iter steps; returns tau
// (float64, 1 for untouched rows).
#include "em_inf_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "vec_math.h"

namespace em_hf {

using vec::kLanes;
using vec::VecF;

namespace {

int64_t padded_size(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

struct Stats {
  float entropy;
  float lse;
};

Stats stats_of(const float* z, int64_t padded) {
  RowStats stats;
  for (int64_t begin = 0; begin < padded; begin += kBlock) stats.add_block(z + begin, std::min(kBlock, padded - begin));
  Stats out;
  stats.finish(&out.entropy, &out.lse);
  return out;
}

struct AdamConfig {
  bool adam;
  float lr, kl_weight, beta1, beta2, eps;
};

// One optimizer step over the whole row (z, moments in place) and the statistics of the new z.
Stats step_row(float* z, float* exp_avg, float* exp_avg_sq, const float* p_orig, Stats current, int64_t padded,
               int64_t step, const AdamConfig& cfg) {
  const VecF zero = vec::broadcast(0.0f);
  const VecF lse_v = vec::broadcast(current.lse);
  const VecF h_v = vec::broadcast(current.entropy);
  const VecF kl_v = vec::broadcast(cfg.kl_weight);
  const VecF b1 = vec::broadcast(cfg.beta1), one_minus_b1 = vec::broadcast(1.0f - cfg.beta1);
  const VecF b2 = vec::broadcast(cfg.beta2), one_minus_b2 = vec::broadcast(1.0f - cfg.beta2);
  const float bias1 = 1.0f - std::pow(cfg.beta1, static_cast<float>(step));
  const float bias2_sqrt = std::sqrt(1.0f - std::pow(cfg.beta2, static_cast<float>(step)));
  const VecF step_size = vec::broadcast(cfg.lr / bias1);
  const VecF inv_bias2_sqrt = vec::broadcast(1.0f / bias2_sqrt);
  const VecF eps = vec::broadcast(cfg.eps);
  const VecF lr = vec::broadcast(cfg.lr);
  RowStats next;
  for (int64_t begin = 0; begin < padded; begin += kBlock) {
    const int64_t end = std::min(begin + kBlock, padded);
    for (int64_t i = begin; i < end; i += kLanes) {
      const VecF zi = vec::load(z + i);
      const VecF log_p = zi - lse_v;
      const VecF p = vec::exp_nonpositive(log_p);
      VecF g = p > zero ? -(p * (log_p + h_v)) : zero;
      g += kl_v * (p - vec::load(p_orig + i));
      VecF updated;
      if (cfg.adam) {
        VecF m = vec::load(exp_avg + i);
        VecF v = vec::load(exp_avg_sq + i);
        m = m + (g - m) * one_minus_b1;  // torch's lerp_(grad, 1 - beta1)
        v = v * b2 + one_minus_b2 * g * g;
        vec::store(exp_avg + i, m);
        vec::store(exp_avg_sq + i, v);
        const VecF denom = vec::vsqrt(v) * inv_bias2_sqrt + eps;
        updated = zi - step_size * (m / denom);
      } else {
        updated = zi - lr * g;
      }
      // Masked entries stay -inf (their gradient is 0, but -inf - 0 must not become NaN).
      updated = zi == vec::broadcast(kNegInf) ? zi : updated;
      vec::store(z + i, updated);
    }
    next.add_block(z + begin, end - begin);
  }
  Stats out;
  next.finish(&out.entropy, &out.lse);
  return out;
}

template <typename scalar_t>
void em_inf_row(const scalar_t* in, scalar_t* out, int64_t vocab, float threshold, int64_t n_steps,
                const AdamConfig& cfg, std::vector<float>& work) {
  const int64_t padded = padded_size(vocab);
  work.resize(4 * padded);
  float* z = work.data();
  float* p_orig = z + padded;
  float* exp_avg = p_orig + padded;
  float* exp_avg_sq = exp_avg + padded;
  for (int64_t i = 0; i < vocab; ++i) z[i] = static_cast<float>(in[i]);
  for (int64_t i = vocab; i < padded; ++i) z[i] = kNegInf;
  Stats current = stats_of(z, padded);
  if (!(current.entropy > threshold)) {  // at or below the threshold (or NaN, caught by the caller)
    if (in != out) std::copy(in, in + vocab, out);
    return;
  }
  // p_orig is stored once rather than recomputed (one exp per entry saved at every step).
  const VecF lse_orig = vec::broadcast(current.lse);
  for (int64_t i = 0; i < padded; i += kLanes)
    vec::store(p_orig + i, vec::exp_nonpositive(vec::load(z + i) - lse_orig));
  std::fill(exp_avg, exp_avg + 2 * padded, 0.0f);
  for (int64_t step = 1; step <= n_steps; ++step) {
    if (!(current.entropy > threshold)) break;
    current = step_row(z, exp_avg, exp_avg_sq, p_orig, current, padded, step, cfg);
  }
  for (int64_t i = 0; i < vocab; ++i) out[i] = static_cast<scalar_t>(z[i]);
}

}  // namespace

at::Tensor em_inf_cpu(const at::Tensor& logits_in, double threshold, int64_t n_steps, double lr, double kl_weight,
                      bool adam, double beta1, double beta2, double eps) {
  check_cpu_logits(logits_in, "em_hf::em_inf");
  TORCH_CHECK(n_steps >= 1, "em_hf::em_inf: n_steps must be >= 1");
  const at::Tensor logits = logits_in.contiguous();
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  at::Tensor out = at::empty_like(logits);
  const AdamConfig cfg{adam, static_cast<float>(lr), static_cast<float>(kl_weight), static_cast<float>(beta1),
                       static_cast<float>(beta2), static_cast<float>(eps)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "em_inf_cpu", [&] {
    const scalar_t* in = logits.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> work;
      for (int64_t r = begin; r < end; ++r)
        em_inf_row(in + r * vocab, o + r * vocab, vocab, static_cast<float>(threshold), n_steps, cfg, work);
    });
  });
  return out;
}

at::Tensor adaptive_temperature_cpu(const at::Tensor& logits_in, double alpha, double threshold, double tau_min,
                                    double tau_max, int64_t max_iter, double tol) {
  check_cpu_logits(logits_in, "em_hf::adaptive_temperature");
  const at::Tensor logits = logits_in.contiguous();
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  at::Tensor tau = at::ones({rows}, logits.options().dtype(at::kDouble));
  double* tau_ptr = tau.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "adaptive_temperature_cpu", [&] {
    const scalar_t* in = logits.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      const int64_t padded = padded_size(vocab);
      std::vector<float> z(padded), scaled(padded);
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t i = 0; i < vocab; ++i) z[i] = static_cast<float>(in[r * vocab + i]);
        for (int64_t i = vocab; i < padded; ++i) z[i] = kNegInf;
        const double h0 = stats_of(z.data(), padded).entropy;
        if (!(h0 > threshold)) continue;
        const double target = std::max(threshold, alpha * h0);
        // The row's maximum is subtracted before the division, so a small tau gives -inf (p = 0)
        // where z / tau would overflow to +inf.
        float z_max = kNegInf;
        for (int64_t i = 0; i < vocab; ++i) z_max = std::max(z_max, z[i]);
        double low = tau_min, high = tau_max, mid = 1.0;
        for (int64_t it = 0; it < max_iter; ++it) {
          mid = (low + high) / 2;
          const float mid_f = static_cast<float>(mid);
          for (int64_t i = 0; i < padded; ++i) scaled[i] = (z[i] - z_max) / mid_f;
          const double h = stats_of(scaled.data(), padded).entropy;
          if (std::abs(h - target) < tol) break;
          if (h < target) low = mid; else high = mid;
        }
        tau_ptr[r] = mid;
      }
    });
  });
  return tau;
}

}  // namespace em_hf
