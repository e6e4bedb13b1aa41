// The schemas of the em_hf custom ops (namespace em_hf), defined once for every backend: the CPU
// implementations are registered in entropy_cpu.cpp, the CUDA ones in entropy_cuda.cpp, and the
// Python side (em_hf/ops/_registration.py) adds autograd and fake (meta) implementations.
//   entropy_forward:      per row of 2-D logits at a temperature, the [rows, 6] statistics of
//                         stats_layout.h (H, max, log-sum, self-certainty, label log-prob, count)
//   entropy_backward:     dL/dz from the gradients [rows, 3] of (H, self-certainty, label log-prob)
//   em_inf:               EM-INF logit optimization, per row (em_inf_cpu.cpp)
//   adaptive_temperature: the per-row temperature of Algorithm 1, float64 (em_inf_cpu.cpp)
#include <torch/library.h>

TORCH_LIBRARY(em_hf, m) {
  m.def("entropy_forward(Tensor logits, float temperature, Tensor? labels, bool self_certainty) -> Tensor");
  m.def("entropy_backward(Tensor grads, Tensor logits, Tensor stats, float temperature, Tensor? labels) -> Tensor");
  m.def(
      "em_inf(Tensor logits, float threshold, int n_steps, float lr, float kl_weight, bool adam, "
      "float beta1, float beta2, float eps) -> Tensor");
  m.def(
      "adaptive_temperature(Tensor logits, float alpha, float threshold, float tau_min, float tau_max, "
      "int max_iter, float tol) -> Tensor");
}
