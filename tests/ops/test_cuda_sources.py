"""The CUDA kernels (em_hf/ops/csrc/entropy_cuda_kernels.cu) checked on a machine without a GPU.

1. nvcc compiles them for sm_90 and sm_80 with torch's extension flags, without any warning
   (register spills included).
2. The same source, its launches rewritten, is compiled by g++ against small stand-ins for the CUDA
   headers that run every thread of a block as a std::thread (std::barrier for __syncthreads and
   the warp shuffles), and the results are compared with the PyTorch implementation. This checks
   the chunking (misaligned and strided rows included), the online statistics and their
   reductions, and the EM-INF and bisection loops; not the GPU's memory model nor its fast exp.
"""

from __future__ import annotations

import ctypes
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from em_hf.generation.adaptive_temperature import AdaptiveTemperatureLogitsWarper
from em_hf.ops._torch_impl import (
    GRAD_COLUMNS,
    IGNORE_INDEX,
    STAT_COLUMNS,
    STAT_ENTROPY,
    STAT_LABEL_LOGPROB,
    STAT_MAX,
    entropy_backward_torch,
    entropy_forward_torch,
)
from em_hf.ops.logit_optimization import _em_inf_torch
from tests.helpers import use_backend

KERNELS = Path(__file__).resolve().parents[2] / "em_hf" / "ops" / "csrc" / "entropy_cuda_kernels.cu"
ARCHS = ("sm_90", "sm_80")
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
INVALID_VALUE = 1  # cudaErrorInvalidValue
# Warnings as errors; a register spill is reported as a warning too.
NVCC_FLAGS = ("-O3", "-std=c++17", "-Werror", "all-warnings", "-Xptxas", "-warn-spills")

# Stand-ins for the CUDA headers: host code that runs a kernel's blocks one after the other, each
# with one std::thread per CUDA thread.
CUDA_RUNTIME_H = r"""
#pragma once
#include <barrier>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static  // blocks run one at a time

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
typedef struct CUstream_st* cudaStream_t;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local dim3 threadIdx, blockIdx, blockDim;

namespace emu {
struct Warp {
  std::barrier<> barrier{32};
  float lanes[32];
};
inline thread_local std::barrier<>* block_barrier;
inline thread_local Warp* warp;

template <typename Kernel>
void launch(unsigned blocks, int threads, Kernel kernel) {
  for (unsigned b = 0; b < blocks; ++b) {
    std::barrier<> barrier(threads);
    std::unique_ptr<Warp[]> warps(new Warp[threads / 32]);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        threadIdx.x = t;
        blockIdx.x = b;
        blockDim.x = threads;
        block_barrier = &barrier;
        warp = &warps[t / 32];
        kernel();
      });
    for (std::thread& thread : pool) thread.join();
  }
}
}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  const int lane = threadIdx.x % 32;
  emu::warp->lanes[lane] = value;
  emu::warp->barrier.arrive_and_wait();
  const float other = emu::warp->lanes[lane ^ lane_mask];
  emu::warp->barrier.arrive_and_wait();
  return other;
}
inline float __expf(float x) { return std::exp(x); }
"""

CUDA_BF16_H = r"""
#pragma once
#include <cstdint>
#include <cstring>
struct __nv_bfloat16 { uint16_t bits; };
inline float __bfloat162float(__nv_bfloat16 x) {
  const uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}
"""

CUDA_FP16_H = r"""
#pragma once
struct __half { _Float16 value; };
inline float __half2float(__half x) { return float(x.value); }
inline __half __float2half(float f) { return {static_cast<_Float16>(f)}; }
"""

# C entry points for ctypes, appended to the rewritten kernels.
EXPORTS = r"""
using em_hf::cuda::Dtype;
extern "C" {
int emu_entropy_forward(const void* x, int dtype, int64_t rows, int64_t vocab, int64_t stride, float inv_t,
                        const int64_t* labels, bool self_certainty, float* stats) {
  return em_hf::cuda::entropy_forward(x, Dtype(dtype), rows, vocab, stride, inv_t, labels, self_certainty,
                                      stats, nullptr);
}
int emu_entropy_backward(const float* grads, const void* x, int dtype, int64_t rows, int64_t vocab,
                         int64_t stride, const float* stats, const int64_t* labels, float inv_t, void* grad) {
  return em_hf::cuda::entropy_backward(grads, x, Dtype(dtype), rows, vocab, stride, stats, labels, inv_t,
                                       grad, nullptr);
}
int emu_em_inf(const void* x, int dtype, int64_t rows, int64_t vocab, int64_t stride, float threshold,
               int64_t n_steps, float lr, float kl_weight, bool adam, float beta1, float beta2, float eps,
               float* workspace, void* out) {
  return em_hf::cuda::em_inf(x, Dtype(dtype), rows, vocab, stride, threshold, n_steps, lr, kl_weight, adam,
                             beta1, beta2, eps, workspace, out, nullptr);
}
int emu_adaptive_temperature(const void* x, int dtype, int64_t rows, int64_t vocab, int64_t stride,
                             double alpha, double threshold, double tau_min, double tau_max, int64_t max_iter,
                             double tol, double* tau) {
  return em_hf::cuda::adaptive_temperature(x, Dtype(dtype), rows, vocab, stride, alpha, threshold, tau_min,
                                           tau_max, max_iter, tol, tau, nullptr);
}
}
"""

# kernel<...><<<grid, block, 0, stream>>>(args);  ->  emu::launch(grid, block, [&] { kernel<...>(args); });
LAUNCH = re.compile(r"(\w+_kernel<[^<>]*>)\s*<<<([^,]+),([^,]+),[^,]+,[^>]+>>>\((.*?)\);", re.DOTALL)

P = ctypes.c_void_p
I64, F32, F64 = ctypes.c_int64, ctypes.c_float, ctypes.c_double
SIGNATURES = {
    "emu_entropy_forward": [P, ctypes.c_int, I64, I64, I64, F32, P, ctypes.c_bool, P],
    "emu_entropy_backward": [P, P, ctypes.c_int, I64, I64, I64, P, P, F32, P],
    "emu_em_inf": [P, ctypes.c_int, I64, I64, I64, F32, I64, F32, F32, ctypes.c_bool, F32, F32, F32, P, P],
    "emu_adaptive_temperature": [P, ctypes.c_int, I64, I64, I64, F64, F64, F64, F64, I64, F64, P],
}


@pytest.fixture(autouse=True)
def entropy_backend(monkeypatch) -> str:
    """Overrides the backend parametrization of tests/ops/conftest.py: nothing here depends on it.
    The references are the PyTorch implementation."""
    use_backend(monkeypatch, "torch")
    return "torch"


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Both architectures compiled once, in parallel."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed (the CUDA kernels are compile-checked where it is)")
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS  # the flags the extension build adds

    out = tmp_path_factory.mktemp("nvcc")
    processes = {
        arch: subprocess.Popen(
            [
                nvcc,
                "-c",
                f"-arch={arch}",
                *NVCC_FLAGS,
                *COMMON_NVCC_FLAGS,
                "-o",
                str(out / f"{arch}.o"),
                str(KERNELS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for arch in ARCHS
    }
    results = {}
    for arch, process in processes.items():
        output, _ = process.communicate(timeout=300)
        results[arch] = subprocess.CompletedProcess(process.args, process.returncode, output)
    return results


@pytest.mark.parametrize("arch", ARCHS)
def test_kernels_compile_with_nvcc(nvcc_results, arch):
    result = nvcc_results[arch]
    assert result.returncode == 0, result.stdout
    assert "warning" not in result.stdout.lower(), result.stdout


@pytest.fixture(scope="module")
def emulated(tmp_path_factory) -> ctypes.CDLL:
    """The kernels built for the CPU emulation, as a shared library."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    out = tmp_path_factory.mktemp("emulated")
    for name, text in {
        "cuda_runtime.h": CUDA_RUNTIME_H,
        "cuda_bf16.h": CUDA_BF16_H,
        "cuda_fp16.h": CUDA_FP16_H,
    }.items():
        (out / name).write_text(text)
    source, launches = LAUNCH.subn(r"emu::launch(\2,\3, [&] { \1(\4); });", KERNELS.read_text())
    assert launches == 6, "every kernel launch must be rewritten"
    (out / "kernels.cpp").write_text(source + EXPORTS)
    library = out / "kernels.so"
    command = [
        compiler,
        "-std=c++20",
        "-O1",
        "-shared",
        "-fPIC",
        "-pthread",
        f"-I{out}",
        f"-I{KERNELS.parent}",
    ]
    result = subprocess.run(
        [*command, str(out / "kernels.cpp"), "-o", str(library)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lib = ctypes.CDLL(str(library))
    for name, argtypes in SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = ctypes.c_int
    return lib


def ptr(tensor: torch.Tensor) -> int:
    return tensor.data_ptr()


def strided_rows(values: torch.Tensor) -> torch.Tensor:
    """``values`` as a view with row stride vocab + 5 starting 3 elements in, so that rows start at
    every alignment (vector loads on some, element loads on others)."""
    rows, vocab = values.shape
    base = torch.full((rows, vocab + 5), float("nan"), dtype=values.dtype)
    view = base[:, 3 : 3 + vocab]
    view.copy_(values)
    return view


def test_launchers_reject_invalid_arguments(emulated):
    x = torch.zeros(2, 4)
    stats = torch.empty(2, STAT_COLUMNS)
    assert emulated.emu_entropy_forward(ptr(x), 7, 2, 4, 4, 1.0, None, False, ptr(stats)) == INVALID_VALUE
    assert emulated.emu_entropy_forward(ptr(x), 0, 2, 0, 4, 1.0, None, False, ptr(stats)) == INVALID_VALUE
    assert emulated.emu_entropy_forward(ptr(x), 0, 0, 4, 4, 1.0, None, False, None) == 0  # nothing to do
    args = (0.3, 3, 0.1, 0.0, True, 0.9, 0.999, 1e-8)
    assert emulated.emu_em_inf(ptr(x), 0, 2, 4, 4, *args, None, ptr(x)) == INVALID_VALUE  # no workspace


def assert_as_close_to_truth(
    got: torch.Tensor, plain: torch.Tensor, truth: torch.Tensor, floor: float
) -> None:
    """``got`` is at most twice as far from the float64 ``truth`` as the PyTorch implementation
    (``plain``) is, in the worst finite element and in the 99.9% quantile, or within ``floor``."""
    finite = truth.isfinite()
    got_error = (got.double() - truth)[finite].abs()
    plain_error = (plain.double() - truth)[finite].abs()
    for q in (1.0, 0.999):
        assert torch.quantile(got_error, q) <= max(2 * torch.quantile(plain_error, q).item(), floor)


def sample_rows(vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """Six rows: random at two scales, one with every third token masked, one all -inf, one single
    finite token, one sharp (entropy near 0)."""
    torch.manual_seed(vocab)
    rows = torch.randn(6, vocab) * torch.tensor([[1.0], [3.0], [2.0], [1.0], [1.0], [30.0]])
    rows[2, ::3] = -math.inf
    rows[3] = -math.inf
    rows[4, : vocab - 1] = -math.inf
    return rows.to(dtype)


@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("vocab", [7, 1000, 1025, 20000])  # a warp per row, then 256 and 512 threads
@pytest.mark.parametrize("extras", [False, True])  # self-certainty and labels, or the entropy alone
def test_entropy_forward_and_backward_match_torch(emulated, vocab, dtype, extras):
    logits = strided_rows(sample_rows(vocab, dtype))
    rows, temperature, code = logits.shape[0], 0.7, DTYPE_CODES[dtype]
    # Labels: a finite token, a masked one (row 2: every third token is -inf), none (-100), ...
    labels = torch.tensor([vocab - 1, 3, 0, 1, vocab - 1, IGNORE_INDEX]) if extras else None
    stats = torch.empty(rows, STAT_COLUMNS)
    status = emulated.emu_entropy_forward(
        ptr(logits),
        code,
        rows,
        vocab,
        logits.stride(0),
        1 / temperature,
        labels_ptr(labels),
        extras,
        ptr(stats),
    )
    assert status == 0
    expected = entropy_forward_torch(logits, temperature, labels, extras)
    finite = expected.isfinite()
    assert torch.equal(stats.isfinite(), finite)
    torch.testing.assert_close(stats[finite], expected[finite], atol=2e-5, rtol=1e-5)
    assert stats[3, STAT_ENTROPY].item() == 0.0 and stats[3, STAT_MAX].item() == -math.inf
    assert stats[4, STAT_ENTROPY].item() == 0.0
    if extras:
        assert stats[2, STAT_LABEL_LOGPROB].item() == -math.inf and stats[5, STAT_LABEL_LOGPROB].item() == 0.0

    grads = torch.randn(rows, GRAD_COLUMNS)
    grads[1] = 0.0  # nothing to propagate: zeros
    grad = torch.empty(rows, vocab, dtype=dtype)
    status = emulated.emu_entropy_backward(
        ptr(grads),
        ptr(logits),
        code,
        rows,
        vocab,
        logits.stride(0),
        ptr(stats),
        labels_ptr(labels),
        1 / temperature,
        ptr(grad),
    )
    assert status == 0
    assert bool((grad[[1, 3]] == 0).all()) and bool((grad[2, ::3] == 0).all())
    # Where p ~ 1, log p + H cancels and the rounding of z / T decides the last digits: compare
    # both implementations with the float64 result instead of with each other.
    plain = entropy_backward_torch(grads, logits, expected, temperature, labels)
    truth_stats = entropy_forward_torch(logits.double(), temperature, labels, extras)
    truth = entropy_backward_torch(grads.double(), logits.double(), truth_stats, temperature, labels)
    assert_as_close_to_truth(grad, plain, truth, floor=1e-6)


def labels_ptr(labels: torch.Tensor | None) -> int | None:
    return None if labels is None else ptr(labels)


@pytest.mark.parametrize("vocab", [7, 1025])
def test_entropy_of_nan_or_inf_rows_is_nan(emulated, vocab):
    logits = torch.randn(4, vocab)
    logits[0, 1] = math.nan
    logits[1, 2] = math.inf
    logits[2] = -math.inf
    logits[2, 0] = math.nan  # NaN among -inf only
    stats = torch.empty(4, STAT_COLUMNS)
    assert emulated.emu_entropy_forward(ptr(logits), 0, 4, vocab, vocab, 1.0, None, True, ptr(stats)) == 0
    assert stats[:3, STAT_ENTROPY].isnan().all() and stats[3, STAT_ENTROPY].isfinite()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [7, 3000])
@pytest.mark.parametrize(("optimizer", "n_steps"), [("adam", 4), ("adam", 1), ("sgd", 3)])
def test_em_inf_matches_torch(emulated, vocab, dtype, optimizer, n_steps):
    torch.manual_seed(1)
    # Entropies from high to ~0 (row 4: copied unchanged); masked tokens in row 1.
    scores = torch.randn(5, vocab) * torch.tensor([[0.5], [1.0], [2.0], [4.0], [60.0]])
    scores[1, ::4] = -math.inf
    scores = strided_rows(scores.to(dtype))
    out = torch.empty(5, vocab, dtype=dtype)
    workspace = torch.empty(3 * 5 * vocab)
    status = emulated.emu_em_inf(
        ptr(scores),
        DTYPE_CODES[dtype],
        5,
        vocab,
        scores.stride(0),
        0.3,
        n_steps,
        0.1,
        0.1,
        optimizer == "adam",
        0.9,
        0.999,
        1e-8,
        ptr(workspace),
        ptr(out),
    )
    assert status == 0
    assert torch.equal(out.isinf(), scores.isinf()) and torch.equal(out[4], scores[4])
    # Adam turns rounding into a full step where a gradient crosses zero (update ~ lr g / eps for
    # |g| << eps), so single coordinates differ by up to ~lr however it is computed in float32
    # (as in test_kernels.py): compare with the float64 procedure.
    settings = (0.3, n_steps, 0.1, 0.1, optimizer == "adam")
    truth = _em_inf_torch(scores.double(), *settings)
    assert_as_close_to_truth(out, _em_inf_torch(scores, *settings), truth, floor=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [7, 3000])
def test_adaptive_temperature_matches_torch(emulated, vocab, dtype):
    torch.manual_seed(2)
    scores = torch.randn(4, vocab) * torch.tensor([[0.5], [1.0], [3.0], [60.0]])
    scores = strided_rows(scores.to(dtype))
    tau = torch.empty(4, dtype=torch.float64)
    status = emulated.emu_adaptive_temperature(
        ptr(scores), DTYPE_CODES[dtype], 4, vocab, scores.stride(0), 0.6, 0.3, 0.01, 1.0, 20, 1e-3, ptr(tau)
    )
    assert status == 0
    warper = AdaptiveTemperatureLogitsWarper(alpha=0.6, threshold=0.3, max_iter=20, tol=1e-3)
    torch.testing.assert_close(tau, warper.temperatures(scores), atol=0, rtol=0)
    assert bool((tau[:2] < 1.0).all()) and tau[3].item() == 1.0  # row 3 starts below the threshold
