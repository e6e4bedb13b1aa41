import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from em_hf.ops import token_entropy
from em_hf.ops.linear_entropy import default_chunk_size, linear_entropy_loss, linear_token_entropy

IGNORE = -100


def make_inputs(shape=(2, 5), dim=8, vocab=13, dtype=torch.float64, seed=0, scale=1.0, bias=True):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, dim, generator=generator, dtype=torch.float64) * scale
    weight = torch.randn(vocab, dim, generator=generator, dtype=torch.float64)
    b = torch.randn(vocab, generator=generator, dtype=torch.float64) if bias else None
    labels = torch.randint(0, vocab, shape, generator=generator)
    if labels.numel() > 1:
        labels.view(-1)[1] = IGNORE
    if labels.numel() > 4:
        labels.view(-1)[4] = IGNORE
    grad_h = torch.randn(shape, generator=generator, dtype=torch.float64)
    grad_lp = torch.randn(shape, generator=generator, dtype=torch.float64)
    cast = [t.to(dtype).requires_grad_(True) for t in (hidden, weight)]
    if b is not None:
        b = b.to(dtype).requires_grad_(True)
    return cast[0], cast[1], b, labels, grad_h, grad_lp


def reference(hidden, weight, bias, temperature, labels, grad_h, grad_lp):
    """Full [N, V] logits in float64 and torch autograd of the textbook formulas."""
    leaves = [t.detach().double().requires_grad_(True) for t in (hidden, weight)]
    b = None if bias is None else bias.detach().double().requires_grad_(True)
    logits = leaves[0] @ leaves[1].T
    if b is not None:
        logits = logits + b
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    valid = labels != IGNORE
    picked = log_p.gather(-1, torch.where(valid, labels, 0).unsqueeze(-1)).squeeze(-1)
    logprobs = torch.where(valid, picked, torch.zeros_like(picked))
    loss = (entropy * grad_h).sum() + (logprobs * grad_lp).sum()
    inputs = [*leaves, *([b] if b is not None else [])]
    grads = torch.autograd.grad(loss, inputs)
    return entropy.detach(), logprobs.detach(), grads


def ours(hidden, weight, bias, temperature, labels, grad_h, grad_lp, chunk_size):
    entropy, logprobs = linear_token_entropy(
        hidden, weight, bias, temperature=temperature, labels=labels, chunk_size=chunk_size
    )
    loss = (entropy * grad_h.to(entropy.dtype)).sum() + (logprobs * grad_lp.to(logprobs.dtype)).sum()
    inputs = [hidden, weight, *([bias] if bias is not None else [])]
    grads = torch.autograd.grad(loss, inputs)
    return entropy, logprobs, grads


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 1000, None])
def test_matches_full_logits_float64(temperature, chunk_size):
    # 2 x 5 = 10 rows: chunk sizes 3 and 4 do not divide it, 1000 is larger than it.
    inputs = make_inputs(scale=2.0)
    expected = reference(*inputs[:3], temperature, *inputs[3:])
    got = ours(*inputs[:3], temperature, *inputs[3:], chunk_size=chunk_size)
    assert got[0].shape == (2, 5) and got[0].dtype == torch.float64
    torch.testing.assert_close(got[0], expected[0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(got[1], expected[1], atol=1e-12, rtol=1e-10)
    assert got[1][0, 1].item() == 0.0 and got[1][0, 4].item() == 0.0  # ignored labels
    for mine, theirs in zip(got[2], expected[2], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("with_bias", [True, False])
def test_float32_matches_float64_reference_and_token_entropy(with_bias):
    hidden, weight, bias, labels, grad_h, grad_lp = make_inputs(
        shape=(3, 37), dim=24, vocab=301, dtype=torch.float32, seed=1, bias=with_bias
    )
    expected = reference(hidden, weight, bias, 0.5, labels, grad_h, grad_lp)
    got = ours(hidden, weight, bias, 0.5, labels, grad_h, grad_lp, chunk_size=16)
    assert got[0].dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in got[2])
    torch.testing.assert_close(got[0].double(), expected[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1].double(), expected[1], atol=1e-4, rtol=1e-4)
    for mine, theirs in zip(got[2], expected[2], strict=True):
        torch.testing.assert_close(mine.double(), theirs, atol=1e-3, rtol=1e-3)

    # Same numbers as the full-logits path of em_hf in float32.
    logits = hidden @ weight.T + (bias if with_bias else 0)
    naive = token_entropy(logits, 0.5)
    torch.testing.assert_close(got[0], naive, atol=1e-5, rtol=1e-5)
    inputs = [hidden, weight, *([bias] if with_bias else [])]
    naive_grads = torch.autograd.grad((naive * grad_h.float()).sum(), inputs)
    entropy_only = torch.autograd.grad(
        (linear_token_entropy(hidden, weight, bias, 0.5, chunk_size=16) * grad_h.float()).sum(), inputs
    )
    for mine, theirs in zip(entropy_only, naive_grads, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_without_labels_returns_a_tensor_and_matches():
    hidden, weight, bias, _, grad_h, _ = make_inputs(seed=2)
    entropy = linear_token_entropy(hidden, weight, bias, temperature=0.7, chunk_size=3)
    assert isinstance(entropy, torch.Tensor) and entropy.shape == (2, 5)
    grads = torch.autograd.grad((entropy * grad_h).sum(), [hidden, weight, bias])
    expected = reference(hidden, weight, bias, 0.7, torch.full((2, 5), IGNORE), grad_h, torch.zeros(2, 5))
    torch.testing.assert_close(entropy, expected[0], atol=1e-12, rtol=1e-10)
    for mine, theirs in zip(grads, expected[2], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=1e-9)


def test_label_logprob_gradient_alone():
    # Only the log-probabilities feed the loss: the entropy output gets no gradient at all.
    hidden, weight, bias, labels, grad_h, grad_lp = make_inputs(seed=3)
    _, logprobs = linear_token_entropy(hidden, weight, bias, temperature=1.5, labels=labels, chunk_size=4)
    grads = torch.autograd.grad((logprobs * grad_lp).sum(), [hidden, weight, bias])
    expected = reference(hidden, weight, bias, 1.5, labels, torch.zeros_like(grad_h), grad_lp)
    for mine, theirs in zip(grads, expected[2], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=1e-9)


def test_all_labels_ignored_give_zero_logprobs_and_the_entropy_gradient():
    hidden, weight, bias, _, grad_h, grad_lp = make_inputs(seed=4)
    labels = torch.full((2, 5), IGNORE)
    got = ours(hidden, weight, bias, 1.0, labels, grad_h, grad_lp, chunk_size=3)
    assert torch.equal(got[1], torch.zeros(2, 5, dtype=torch.float64))
    expected = reference(hidden, weight, bias, 1.0, labels, grad_h, torch.zeros_like(grad_lp))
    for mine, theirs in zip(got[2], expected[2], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=1e-9)


def test_gradcheck_float64():
    hidden, weight, bias, labels, _, _ = make_inputs(shape=(2, 3), dim=4, vocab=5, seed=5)

    def function(h, w, b):
        return linear_token_entropy(h, w, b, temperature=0.8, labels=labels, chunk_size=4)

    assert torch.autograd.gradcheck(function, (hidden, weight, bias))


def test_masked_tokens_with_minus_inf_bias_drop_out():
    hidden, weight, bias, labels, grad_h, grad_lp = make_inputs(shape=(6,), vocab=9, seed=6)
    keep = torch.tensor([0, 2, 3, 5, 8])
    masked_bias = torch.full((9,), -math.inf, dtype=torch.float64)
    masked_bias[keep] = bias.detach()[keep]
    labels = torch.tensor([0, 2, IGNORE, 3, 5, 8])
    entropy, logprobs = linear_token_entropy(hidden, weight, masked_bias, labels=labels, chunk_size=4)
    grad_hidden, grad_weight = torch.autograd.grad(
        (entropy * grad_h).sum() + (logprobs * grad_lp).sum(), [hidden, weight]
    )
    # Reference: the same problem over the kept tokens only.
    remap = torch.full((9,), IGNORE)
    remap[keep] = torch.arange(len(keep))
    small_labels = torch.where(labels == IGNORE, IGNORE, remap[labels.clamp_min(0)])
    expected = reference(hidden, weight[keep], bias[keep], 1.0, small_labels, grad_h, grad_lp)
    torch.testing.assert_close(entropy, expected[0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(logprobs, expected[1], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad_hidden, expected[2][0], atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(grad_weight[keep], expected[2][1], atol=1e-10, rtol=1e-9)
    drop = torch.tensor([1, 4, 6, 7])
    assert torch.equal(grad_weight[drop], torch.zeros(4, 8, dtype=torch.float64))


def test_rows_without_mass_get_zero_entropy_and_no_gradient():
    # A bias of -inf everywhere masks every token: no row has a distribution. Entropy 0 (as in
    # token_entropy), label log-prob -inf (0 when ignored), and zero (never NaN) gradients.
    hidden, weight, _, _, _, _ = make_inputs(shape=(4,), vocab=6, seed=12)
    bias = torch.full((6,), -math.inf, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([IGNORE, 2, IGNORE, 5])
    entropy, logprobs = linear_token_entropy(
        hidden, weight, bias, temperature=0.5, labels=labels, chunk_size=3
    )
    assert torch.equal(entropy, torch.zeros(4, dtype=torch.float64))
    assert logprobs.tolist() == [0.0, -math.inf, 0.0, -math.inf]
    loss = entropy.sum() + torch.where(labels == IGNORE, logprobs, 0).sum()
    grads = torch.autograd.grad(loss, [hidden, weight, bias])
    for grad in grads:
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    hidden, weight, _, labels, grad_h, grad_lp = make_inputs(
        shape=(4, 33), dim=32, vocab=200, dtype=dtype, seed=7, scale=0.5, bias=False
    )
    got = ours(hidden, weight, None, 0.5, labels, grad_h, grad_lp, chunk_size=20)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert got[2][0].dtype == dtype and got[2][1].dtype == dtype
    # Reference from the same (rounded) inputs in float64; the half-precision logits cost accuracy.
    expected = reference(hidden, weight, None, 0.5, labels, grad_h, grad_lp)
    torch.testing.assert_close(got[0].double(), expected[0], atol=0.05, rtol=0.02)
    torch.testing.assert_close(got[1].double(), expected[1], atol=0.1, rtol=0.02)
    for mine, theirs in zip(got[2], expected[2], strict=True):
        error = (mine.double() - theirs).norm() / theirs.norm()
        assert error < 0.03, error
    # And the entropy of the half-precision logits that em_hf computes from the full matrix.
    naive = token_entropy(hidden.detach() @ weight.detach().T, 0.5)
    torch.testing.assert_close(got[0], naive, atol=1e-2, rtol=1e-2)


def test_half_precision_head_gradients_are_summed_in_float32():
    # Label 0 on every row: grad_b[0] = sum over 1024 rows of (1 - p_0) ~ 1000. Summed chunk by chunk in
    # bfloat16 it would stall near 256 (spacing 2 there, increments < 1 round away).
    rows, dim, vocab = 1024, 4, 16
    generator = torch.Generator().manual_seed(8)
    hidden = (1 + 0.1 * torch.randn(rows, dim, generator=generator)).bfloat16()
    weight = (0.1 * torch.randn(vocab, dim, generator=generator)).bfloat16().requires_grad_(True)
    bias = torch.zeros(vocab, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.zeros(rows, dtype=torch.int64)
    _, logprobs = linear_token_entropy(hidden, weight, bias, labels=labels, chunk_size=1)
    grad_weight, grad_bias = torch.autograd.grad(logprobs.sum(), [weight, bias])
    assert grad_weight.dtype == torch.bfloat16 and grad_bias.dtype == torch.bfloat16
    _, _, expected = reference(hidden, weight, bias, 1.0, labels, torch.zeros(rows), torch.ones(rows))
    assert expected[1][0, 0] > 900 and expected[2][0] > 900
    torch.testing.assert_close(grad_weight.double(), expected[1], atol=0.05, rtol=0.01)
    torch.testing.assert_close(grad_bias.double(), expected[2], atol=0.05, rtol=0.01)


@pytest.mark.parametrize("shape", [(0,), (2, 0), (3, 0, 4)])
def test_zero_rows(shape):
    hidden = torch.randn(*shape, 6, requires_grad=True)
    weight = torch.randn(10, 6, requires_grad=True)
    bias = torch.randn(10, requires_grad=True)
    labels = torch.zeros(shape, dtype=torch.int64)
    entropy, logprobs = linear_token_entropy(hidden, weight, bias, labels=labels, chunk_size=3)
    assert entropy.shape == shape and logprobs.shape == shape
    (entropy.sum() + logprobs.sum()).backward()
    assert hidden.grad.shape == hidden.shape
    assert torch.equal(weight.grad, torch.zeros(10, 6)) and torch.equal(bias.grad, torch.zeros(10))


def test_single_vector_and_non_contiguous_hidden():
    hidden, weight, bias, _, _, _ = make_inputs(shape=(5, 2), seed=9)
    transposed = hidden.detach().transpose(0, 1)  # [2, 5, 8], not contiguous
    assert not transposed.is_contiguous()
    expected = reference(
        transposed, weight, bias, 1.0, torch.full((2, 5), IGNORE), torch.ones(2, 5), torch.zeros(2, 5)
    )
    torch.testing.assert_close(linear_token_entropy(transposed, weight, bias, chunk_size=3), expected[0])
    single = linear_token_entropy(transposed[1, 3], weight, bias)
    assert single.shape == ()
    torch.testing.assert_close(single, expected[0][1, 3])


def test_no_grad_path_and_frozen_inputs():
    hidden, weight, bias, labels, grad_h, _ = make_inputs(seed=10)
    with torch.no_grad():
        entropy, logprobs = linear_token_entropy(hidden, weight, bias, labels=labels, chunk_size=3)
    assert entropy.grad_fn is None and logprobs.grad_fn is None
    expected = reference(hidden, weight, bias, 1.0, labels, grad_h, grad_h)
    torch.testing.assert_close(entropy, expected[0])
    torch.testing.assert_close(logprobs, expected[1])

    # Only the hidden states train (a frozen LM head): no weight or bias gradient is computed.
    frozen_weight, frozen_bias = weight.detach(), bias.detach()
    with RecordOps() as recorder:
        entropy = linear_token_entropy(hidden, frozen_weight, frozen_bias, chunk_size=3)
        (grad_hidden,) = torch.autograd.grad((entropy * grad_h).sum(), [hidden])
    assert "aten.addmm_.default" not in recorder.ops  # grad_weight += grad_z.T @ hidden
    assert ("aten.sum.dim_IntList", [0]) not in recorder.reductions  # grad_bias += grad_z.sum(0)
    torch.testing.assert_close(
        grad_hidden, reference(hidden, weight, bias, 1.0, labels, grad_h, 0 * grad_h)[2][0]
    )

    # Only the head trains: no gradient for the hidden states is computed.
    frozen_hidden = hidden.detach()
    with RecordOps() as recorder:
        entropy = linear_token_entropy(frozen_hidden, weight, bias, chunk_size=3)
        torch.autograd.grad((entropy * grad_h).sum(), [weight, bias])
    assert "aten.mm.out" not in recorder.ops


def test_non_finite_logits_raise():
    hidden, weight, bias, _, _, _ = make_inputs(seed=11)
    broken = hidden.detach().clone()
    broken[1, 2, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        linear_token_entropy(broken, weight, bias)


class RecordOps(TorchDispatchMode):
    """Records every aten op and the largest tensor any op returns (in elements)."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()
        self.largest = 0
        self.reductions: list[tuple[str, list[int]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        if func is torch.ops.aten.sum.dim_IntList:
            self.reductions.append((str(func), list(args[1])))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_memory_never_holds_rows_times_vocab():
    rows, dim, vocab, chunk = 512, 16, 1024, 64
    hidden = torch.randn(rows, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    bias = torch.randn(vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (rows,))

    def saved_sizes(function):
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), RecordOps() as recorder:
            entropy, logprobs = function()
            (entropy.sum() + logprobs.sum()).backward()
        return max(sizes), recorder.largest

    def naive():
        log_p = torch.log_softmax(hidden @ weight.T + bias, dim=-1)
        return token_entropy(hidden @ weight.T + bias), log_p.gather(-1, labels[:, None]).squeeze(-1)

    # The check can fail: the full-logits computation saves and creates [rows, vocab] tensors.
    naive_saved, naive_largest = saved_sizes(naive)
    assert naive_saved >= rows * vocab and naive_largest >= rows * vocab

    saved, largest = saved_sizes(
        lambda: linear_token_entropy(hidden, weight, bias, labels=labels, chunk_size=chunk)
    )
    assert saved == vocab * dim  # the weight is the largest thing kept for backward
    assert largest <= chunk * vocab

    with torch.no_grad(), RecordOps() as recorder:
        linear_token_entropy(hidden, weight, bias, labels=labels, chunk_size=chunk)
    assert recorder.largest <= chunk * vocab


def test_default_chunk_size():
    assert default_chunk_size(49152) == 1024  # 3 * 2**24 // 49152 = 1024 rows, a multiple of 16
    assert default_chunk_size(151936) == 320  # 331 rows, rounded down to 16
    assert default_chunk_size(2**27) == 1
    assert default_chunk_size(128) == 3 * 2**17
    assert default_chunk_size(3 * 2**24 // 10) == 10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight": torch.randn(5, 7)}, ValueError, "last dimension 8"),
        ({"weight": torch.randn(8, 5)}, ValueError, "transpose"),
        ({"weight": torch.randn(5)}, ValueError, "2-D"),
        ({"weight": torch.randn(0, 8)}, ValueError, "empty vocabulary"),
        ({"bias": torch.randn(4)}, ValueError, "`bias` must have shape"),
        ({"bias": torch.randn(5, dtype=torch.float64)}, TypeError, "bias.to"),
        ({"labels": torch.zeros(2, 4, dtype=torch.int64)}, ValueError, "hidden.shape"),
        ({"labels": torch.zeros(2, 3)}, TypeError, "integer"),
        ({"labels": torch.tensor([[0, 1, 5], [0, 0, 0]])}, ValueError, "found 5"),
        ({"labels": torch.tensor([[0, 1, -1], [0, 0, 0]])}, ValueError, "found -1"),
        ({"hidden": torch.zeros(2, 3, 8, dtype=torch.int64)}, TypeError, "floating-point"),
        ({"weight": torch.zeros(5, 8, dtype=torch.int32)}, TypeError, "floating-point"),
        ({"hidden": torch.randn(2, 3, 8, dtype=torch.float64)}, TypeError, "hidden.to"),
        ({"hidden": "text"}, TypeError, "torch.Tensor"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": math.inf}, ValueError, "temperature"),
        ({"temperature": torch.tensor([1.0, 2.0])}, TypeError, "`temperature` must be one number here"),
        ({"temperature": torch.tensor(1.0, requires_grad=True)}, ValueError, "`temperature` requires grad"),
        ({"temperature": 1e-300}, ValueError, "`temperature` must be >= 1e-37"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": 2.5}, ValueError, "chunk_size"),
    ],
)
def test_errors(kwargs, error, match):
    arguments = {
        "hidden": torch.randn(2, 3, 8),
        "weight": torch.randn(5, 8),
        "bias": torch.randn(5),
        "labels": torch.tensor([[0, IGNORE, 4], [1, 2, 3]]),
    }
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        linear_token_entropy(**arguments)


# --- linear_entropy_loss: sum_r w_r H_r with the gradients formed in the forward pass -------------


def _naive_weighted_loss(hidden, weight, bias, token_weights, temperature):
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    return (token_weights.double() * -(log_p.exp() * log_p).sum(-1)).sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_size", [1, 7, 100])
def test_linear_entropy_loss_matches_the_full_computation(dtype, chunk_size):
    from em_hf.ops.linear_entropy import linear_entropy_loss

    generator = torch.Generator().manual_seed(11)
    hidden = torch.randn(3, 13, 16, generator=generator, dtype=dtype).requires_grad_(True)
    weight = (torch.randn(40, 16, generator=generator, dtype=dtype) * 2).requires_grad_(True)
    bias = torch.randn(40, generator=generator, dtype=dtype).requires_grad_(True)
    token_weights = (torch.rand(3, 13, generator=generator) > 0.3).to(dtype) / 10
    loss = linear_entropy_loss(hidden, weight, token_weights, bias, temperature=0.5, chunk_size=chunk_size)
    (3 * loss).backward()
    inputs = [t.detach().double().requires_grad_(True) for t in (hidden, weight, bias)]
    expected = _naive_weighted_loss(*inputs, token_weights, 0.5)
    (3 * expected).backward()
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
    torch.testing.assert_close(loss.double(), expected.detach(), **tol)
    for got, ref in zip((hidden, weight, bias), inputs, strict=True):
        assert got.grad.dtype == dtype
        torch.testing.assert_close(got.grad.double(), ref.grad, **tol)


def test_linear_entropy_loss_frozen_head_and_no_grad():
    from em_hf.ops.linear_entropy import linear_entropy_loss

    generator = torch.Generator().manual_seed(12)
    hidden = torch.randn(20, 8, generator=generator).requires_grad_(True)
    weight = torch.randn(30, 8, generator=generator)  # frozen LM head (LoRA-style training)
    token_weights = torch.full((20,), 0.05)
    linear_entropy_loss(hidden, weight, token_weights, chunk_size=6).backward()
    assert weight.grad is None
    reference = hidden.detach().clone().requires_grad_(True)
    _naive_weighted_loss(reference, weight, None, token_weights, 1.0).backward()
    torch.testing.assert_close(hidden.grad, reference.grad, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        value = linear_entropy_loss(hidden, weight, token_weights)
    assert not value.requires_grad
    torch.testing.assert_close(
        value.double(), _naive_weighted_loss(hidden.detach(), weight, None, token_weights, 1.0)
    )


def test_linear_entropy_loss_bad_weights():
    from em_hf.ops.linear_entropy import linear_entropy_loss

    hidden, weight = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="token_weights"):
        linear_entropy_loss(hidden, weight, torch.ones(5))
    with pytest.raises(ValueError, match="token_weights"):
        linear_entropy_loss(hidden, weight, torch.tensor([1.0, float("nan"), 1.0, 1.0]))


def test_token_weights_that_require_grad_get_the_entropies_as_gradient():
    """They once got no gradient, silently: dL/dw_r = H_r."""
    generator = torch.Generator().manual_seed(11)
    hidden, weight = torch.randn(2, 3, 8, generator=generator), torch.randn(20, 8, generator=generator)
    token_weights = torch.rand(2, 3, generator=generator).requires_grad_(True)
    linear_entropy_loss(hidden, weight.requires_grad_(True), token_weights, temperature=0.5).backward()
    expected = token_entropy(hidden @ weight.detach().T, 0.5)
    torch.testing.assert_close(token_weights.grad, expected, atol=1e-6, rtol=1e-5)
    alone = torch.rand(2, 3, generator=generator).requires_grad_(True)  # only the weights require grad
    linear_entropy_loss(hidden, weight.detach(), alone, temperature=0.5).backward()
    torch.testing.assert_close(alone.grad, expected, atol=1e-6, rtol=1e-5)
