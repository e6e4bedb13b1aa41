// CPU kernels: shared constants and checks; fused EM-INF and adaptive temperature (em_inf_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

namespace em_hf {

// Shared by the CPU kernels: floats per block of a row (8 KiB, stays in L1) and -inf.
constexpr int64_t kBlock = 2048;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The CPU ops take 2-D [rows, vocab] float32/bfloat16/float16 logits with a non-empty vocabulary.
inline void check_cpu_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.device().is_cpu(), op, ": expected a CPU tensor");
  TORCH_CHECK(logits.dim() == 2, op, ": expected 2-D logits [rows, vocab], got ", logits.dim(), "-D");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                  logits.scalar_type() == at::kHalf,
              op, ": logits must be float32, bfloat16 or float16, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(1) > 0, op, ": the vocabulary dimension is empty");
}

at::Tensor em_inf_cpu(const at::Tensor& logits, double threshold, int64_t n_steps, double lr, double kl_weight,
                      bool adam, double beta1, double beta2, double eps);

at::Tensor adaptive_temperature_cpu(const at::Tensor& logits, double alpha, double threshold, double tau_min,
                                    double tau_max, int64_t max_iter, double tol);

}  // namespace em_hf
