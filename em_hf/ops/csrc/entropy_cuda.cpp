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
#include "stats_layout.h"

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

void check_launch(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(error));
}

}  // namespace

// One int64 label per row on the logits' device (values checked by the Python side), or null.
const int64_t* label_pointer(const c10::optional<at::Tensor>& labels, const at::Tensor& logits, at::Tensor& holder,
                             const char* op) {
  if (!labels.has_value() || !labels->defined()) return nullptr;
  TORCH_CHECK(labels->scalar_type() == at::kLong, op, ": labels must be int64");
  TORCH_CHECK(labels->numel() == logits.size(0), op, ": labels must have one value per row");
  TORCH_CHECK(labels->device() == logits.device(), op, ": labels must be on the logits' device");
  holder = labels->contiguous();
  return holder.const_data_ptr<int64_t>();
}

at::Tensor entropy_forward_cuda(const at::Tensor& logits_in, double temperature,
                                const c10::optional<at::Tensor>& labels, bool self_certainty) {
  const char* op = "em_hf::entropy_forward";
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = checked_logits(logits_in, op);
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0");
  const int64_t rows = logits.size(0);
  at::Tensor holder;
  const int64_t* label_ptr = label_pointer(labels, logits, holder, op);
  at::Tensor out = at::empty({rows, stats::kColumns}, logits.options().dtype(at::kFloat));
  check_launch(cuda::entropy_forward(logits.const_data_ptr(), dtype_code(logits), rows, logits.size(1),
                                     logits.stride(0), static_cast<float>(1.0 / temperature), label_ptr,
                                     self_certainty, out.mutable_data_ptr<float>(),
                                     c10::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

at::Tensor entropy_backward_cuda(const at::Tensor& grads_in, const at::Tensor& logits_in, const at::Tensor& stats_in,
                                 double temperature, const c10::optional<at::Tensor>& labels) {
  const char* op = "em_hf::entropy_backward";
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = checked_logits(logits_in, op);
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0");
  const int64_t rows = logits.size(0);
  TORCH_CHECK(grads_in.numel() == rows * stats::kGradColumns, op, ": grads must be [rows, 3]");
  TORCH_CHECK(stats_in.numel() == rows * stats::kColumns, op, ": stats must be [rows, 6] (entropy_forward's)");
  TORCH_CHECK(grads_in.device() == logits.device() && stats_in.device() == logits.device(), op,
              ": grads and stats must be on the logits' device");
  const at::Tensor grads = grads_in.to(at::kFloat).contiguous();
  const at::Tensor row_stats = stats_in.to(at::kFloat).contiguous();
  at::Tensor holder;
  const int64_t* label_ptr = label_pointer(labels, logits, holder, op);
  at::Tensor grad = at::empty({rows, logits.size(1)}, logits.options());
  check_launch(cuda::entropy_backward(grads.const_data_ptr<float>(), logits.const_data_ptr(), dtype_code(logits), rows,
                                      logits.size(1), logits.stride(0), row_stats.const_data_ptr<float>(), label_ptr,
                                      static_cast<float>(1.0 / temperature), grad.mutable_data_ptr(),
                                      c10::cuda::getCurrentCUDAStream()),
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
