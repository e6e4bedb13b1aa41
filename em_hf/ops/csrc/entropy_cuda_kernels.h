// CUDA kernels of the em_hf ops (see entropy_cpu.cpp and em_inf_cpu.cpp for the mathematics),
// behind plain launchers: raw pointers, int64 sizes, a dtype code and a cudaStream_t. No ATen or
// c10 header is used, so this part compiles with nvcc alone (the torch binding is
// entropy_cuda.cpp).
//
// Logits are [rows, vocab] with the last dimension contiguous and `row_stride` elements between
// rows; outputs of shape [rows, vocab] are contiguous. Every launcher returns cudaSuccess, or
// cudaErrorInvalidValue for invalid sizes or dtype (nothing launched), or the launch error.
// rows == 0 launches nothing.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace em_hf {
namespace cuda {

// Element type of the logits (and of the outputs that have the logits' dtype).
enum class Dtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Per row of z, at scale inv_temperature (1/T): the kStatsColumns float32 statistics of
// stats_layout.h into `stats` ([rows, 6] contiguous): H, m = max z, log S with
// S = sum exp((z - m) * inv_t), the self-certainty log S - mean((z - m) * inv_t) - log n over the
// n finite entries and n (both 0 unless self_certainty), and log p[labels[r]] (0 when labels is
// null or holds -100; labels are int64, one per row, in [0, vocab) or -100). An all -inf row gives
// H = 0, m = log S = -inf; NaN or +inf in a row gives H = NaN.
cudaError_t entropy_forward(const void* logits, Dtype dtype, int64_t rows, int64_t vocab, int64_t row_stride,
                            float inv_temperature, const int64_t* labels, bool self_certainty, float* stats,
                            cudaStream_t stream);

// grad[r, v] = inv_t [-gH p (log p + H) + gSC (p - 1[z finite] / n) + gLP (1[v = y] - p)] in
// `dtype` ([rows, vocab] contiguous), log p = (z - m) * inv_t - log S, from grads [rows, 3] =
// (gH, gSC, gLP) float32 and the forward's stats; 0 where p == 0 (and the gSC / n term only on
// finite entries), zeros on all -inf rows; gLP is ignored without a label.
cudaError_t entropy_backward(const float* grads, const void* logits, Dtype dtype, int64_t rows, int64_t vocab,
                             int64_t row_stride, const float* stats, const int64_t* labels, float inv_temperature,
                             void* grad, cudaStream_t stream);

// Floats of the workspace that em_inf needs: z, exp_avg and exp_avg_sq, each [rows, vocab] float32,
// stored one after the other. Uninitialized memory is fine (the first step does not read it).
inline int64_t em_inf_workspace_floats(int64_t rows, int64_t vocab) { return 3 * rows * vocab; }

// Fused EM-INF (em_inf_cpu.cpp): per row, while H > threshold and at most n_steps times, one
// Adam (adam = true, torch.optim.Adam's operation order) or SGD step on z with the gradient
// -p (log p + H) + kl_weight (p - p_orig). Rows whose initial H is <= threshold (or NaN) are copied
// unchanged. `out` is [rows, vocab] contiguous in `dtype`; `workspace` holds
// em_inf_workspace_floats(rows, vocab) floats.
cudaError_t em_inf(const void* logits, Dtype dtype, int64_t rows, int64_t vocab, int64_t row_stride,
                   float threshold, int64_t n_steps, float lr, float kl_weight, bool adam, float beta1,
                   float beta2, float eps, float* workspace, void* out, cudaStream_t stream);

// Adaptive temperature (adaptive_temperature_cpu): per row with H0 = H(softmax(z)) > threshold,
// bisection of tau in [tau_min, tau_max] (float64) until |H(softmax(z / tau)) - max(threshold,
// alpha H0)| < tol or max_iter steps (the row maximum subtracted before the division by tau);
// tau = 1 for the other rows. `tau` is float64 [rows].
cudaError_t adaptive_temperature(const void* logits, Dtype dtype, int64_t rows, int64_t vocab, int64_t row_stride,
                                 double alpha, double threshold, double tau_min, double tau_max, int64_t max_iter,
                                 double tol, double* tau, cudaStream_t stream);

}  // namespace cuda
}  // namespace em_hf
