// CUDA implementations of the em_hf ops whose schemas schemas.cpp defines: tensor checks,
// output and workspace allocation, the current stream, and the launchers of
// entropy_cuda_kernels.cu. Built only where torch has CUDA (the kernels themselves compile with
// nvcc alone). at::cuda::getCurrentCUDAStream is c10::cuda::getCurrentCUDAStream; including
// c10's header avoids ATen/cuda/CUDAContext.h and its cuBLAS/cuSPARSE headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "entropy_cuda_kernels.h"

namespace em_hf {
namespace {

// The logits as [rows, vocab] with a contiguous last dimension (the kernels take the row stride).
at::Tensor checked_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.is_cuda(), op, ": expected a CUDA tensor");
  TORCH_CHECK(logits.dim() == 2, op, ": expected 2-D logits [rows, vocab], got ", logits.dim(), "-D");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                  logits.scalar_type() == at::kHalf,
              op, ": logits must be float32, bfloat16 or float16, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(1) > 0, op, ": the vocabulary dimension is empty");
  TORCH_CHECK(logits.size(0) <= std::numeric_limits<int>::max(), op, ": too many rows (one CUDA block each)");
  return logits.stride(1) == 1 ? logits : logits.contiguous();
}

// One of the three dtypes admitted by checked_logits.
cuda::Dtype dtype_code(const at::Tensor& logits) {
  if (logits.scalar_type() == at::kBFloat16) return cuda::Dtype::kBFloat16;
  if (logits.scalar_type() == at::kHalf) return cuda::Dtype::kFloat16;
  return cuda::Dtype::kFloat32;
}

// One float32 value per row on the logits' device, contiguous.
at::Tensor per_row(const at::Tensor& values, const at::Tensor& logits, const char* name, const char* op) {
  TORCH_CHECK(values.numel() == logits.size(0), op, ": ", name, " must have one value per row");
  TORCH_CHECK(values.device() == logits.device(), op, ": ", name, " must be on the logits' device");
  return values.to(at::kFloat).contiguous();
}

void check_launch(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(error));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> entropy_forward_cuda(const at::Tensor& logits_in, double temperature) {
  const char* op = "em_hf::entropy_forward";
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = checked_logits(logits_in, op);
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0");
  const int64_t rows = logits.size(0);
  at::Tensor entropy = at::empty({rows}, logits.options().dtype(at::kFloat));
  at::Tensor lse = at::empty({rows}, logits.options().dtype(at::kFloat));
  check_launch(cuda::entropy_forward(logits.const_data_ptr(), dtype_code(logits), rows, logits.size(1),
                                     logits.stride(0), static_cast<float>(1.0 / temperature),
                                     entropy.mutable_data_ptr<float>(), lse.mutable_data_ptr<float>(),
                                     c10::cuda::getCurrentCUDAStream()),
               op);
  return {entropy, lse};
}

at::Tensor entropy_backward_cuda(const at::Tensor& grad_entropy_in, const at::Tensor& logits_in,
                                 const at::Tensor& entropy_in, const at::Tensor& lse_in, double temperature) {
  const char* op = "em_hf::entropy_backward";
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = checked_logits(logits_in, op);
  const at::Tensor grad_h = per_row(grad_entropy_in, logits, "grad_entropy", op);
  const at::Tensor h = per_row(entropy_in, logits, "entropy", op);
  const at::Tensor lse = per_row(lse_in, logits, "lse", op);
  at::Tensor grad = at::empty({logits.size(0), logits.size(1)}, logits.options());
  check_launch(cuda::entropy_backward(grad_h.const_data_ptr<float>(), logits.const_data_ptr(), dtype_code(logits),
                                      logits.size(0), logits.size(1), logits.stride(0), h.const_data_ptr<float>(),
                                      lse.const_data_ptr<float>(), static_cast<float>(1.0 / temperature),
                                      grad.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
               op);
  return grad;
}

at::Tensor em_inf_cuda(const at::Tensor& logits_in, double threshold, int64_t n_steps, double lr, double kl_weight,
                       bool adam, double beta1, double beta2, double eps) {
  const char* op = "em_hf::em_inf";
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = checked_logits(logits_in, op);
  TORCH_CHECK(n_steps >= 1, op, ": n_steps must be >= 1");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  at::Tensor out = at::empty({rows, vocab}, logits.options());
  // z, exp_avg, exp_avg_sq in float32 (uninitialized: the kernel's first step does not read them).
  at::Tensor workspace =
      at::empty({cuda::em_inf_workspace_floats(rows, vocab)}, logits.options().dtype(at::kFloat));
  check_launch(cuda::em_inf(logits.const_data_ptr(), dtype_code(logits), rows, vocab, logits.stride(0),
                            static_cast<float>(threshold), n_steps, static_cast<float>(lr),
                            static_cast<float>(kl_weight), adam, static_cast<float>(beta1),
                            static_cast<float>(beta2), static_cast<float>(eps), workspace.mutable_data_ptr<float>(),
                            out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

at::Tensor adaptive_temperature_cuda(const at::Tensor& logits_in, double alpha, double threshold, double tau_min,
                                     double tau_max, int64_t max_iter, double tol) {
  const char* op = "em_hf::adaptive_temperature";
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = checked_logits(logits_in, op);
  at::Tensor tau = at::empty({logits.size(0)}, logits.options().dtype(at::kDouble));
  check_launch(cuda::adaptive_temperature(logits.const_data_ptr(), dtype_code(logits), logits.size(0),
                                          logits.size(1), logits.stride(0), alpha, threshold, tau_min, tau_max,
                                          max_iter, tol, tau.mutable_data_ptr<double>(),
                                          c10::cuda::getCurrentCUDAStream()),
               op);
  return tau;
}

}  // namespace em_hf

TORCH_LIBRARY_IMPL(em_hf, CUDA, m) {
  m.impl("entropy_forward", &em_hf::entropy_forward_cuda);
  m.impl("entropy_backward", &em_hf::entropy_backward_cuda);
  m.impl("em_inf", &em_hf::em_inf_cuda);
  m.impl("adaptive_temperature", &em_hf::adaptive_temperature_cuda);
}
