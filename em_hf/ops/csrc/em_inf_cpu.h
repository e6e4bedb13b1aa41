// Fused EM-INF logit optimization and adaptive-temperature search (CPU), see em_inf_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

namespace em_hf {

at::Tensor em_inf_cpu(const at::Tensor& logits, double threshold, int64_t n_steps, double lr, double kl_weight,
                      bool adam, double beta1, double beta2, double eps);

at::Tensor adaptive_temperature_cpu(const at::Tensor& logits, double alpha, double threshold, double tau_min,
                                    double tau_max, int64_t max_iter, double tol);

}  // namespace em_hf
