"""Prompt selection by pass@k variance (one-shot EM, paper 2 sec. 2.2)."""

from __future__ import annotations

import json

import pytest

import em_hf.data.selection as selection_module
from em_hf.cli import main
from em_hf.data.selection import default_verifier, select_by_pass_variance
from em_hf.generation.batched import Completion
from tests.helpers import make_tiny_llama, make_word_tokenizer


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("2 + 9 = 11", 11, True),
        ("The answer is 12.", 11, False),
        ("so 1,000 in all", 1000, True),
        ("x = -3", "-3", True),
        ("it is 2.50", 2.5, True),
        ("no number here", 4, False),
        ("first 11, then 12", 11, False),  # the LAST number counts
        (r"so \boxed{\frac{1}{2}}", "0.5", True),  # math-verify: 1/2 == 0.5
        (r"\boxed{\frac{1}{3}}", "0.5", False),
        (r"\boxed{x^2 + 1}", "1 + x^2", True),
    ],
)
def test_default_verifier(completion, answer, expected):
    assert default_verifier(completion, answer) is expected


def _fake_generation(monkeypatch, correct_per_prompt: list[int], k: int, answers: list[int]):
    """generate_completions replaced: prompt i gets `correct_per_prompt[i]` right answers out of k."""
    calls = []

    def fake(model, tokenizer, prompts, method, *, max_new_tokens, batch_size, seed, progress):
        calls.append({"prompts": list(prompts), "method": method, "seed": seed})
        completions = []
        for i, answer in enumerate(answers):
            for j in range(k):
                text = f"= {answer}" if j < correct_per_prompt[i] else f"= {answer + 1}"
                completions.append(Completion(text=text, num_tokens=2, mean_entropy=0.1))
        return completions, 1.0

    monkeypatch.setattr(selection_module, "generate_completions", fake)
    return calls


def test_ranks_by_variance_with_pass_rates(monkeypatch):
    k, answers = 8, [3, 5, 7, 9]
    prompts = [f"p{i}" for i in range(4)]
    correct = [8, 4, 2, 0]
    calls = _fake_generation(monkeypatch, correct, k, answers)
    ranked = select_by_pass_variance(None, None, prompts, answers, k=k, temperature=0.7, seed=3)
    # Each prompt is sampled k times, in order, with the requested temperature and seed.
    assert calls[0]["prompts"] == [p for p in prompts for _ in range(k)]
    assert calls[0]["method"].temperature == 0.7 and calls[0]["method"].do_sample
    assert calls[0]["seed"] == 3
    by_index = {row.index: row for row in ranked}
    for i in range(4):
        outcomes = [1.0] * correct[i] + [0.0] * (k - correct[i])
        mean = sum(outcomes) / k
        assert by_index[i].pass_rate == pytest.approx(mean)
        assert by_index[i].variance == pytest.approx(sum((o - mean) ** 2 for o in outcomes) / k)
        assert by_index[i].prompt == prompts[i] and by_index[i].answer == answers[i]
        assert len(by_index[i].completions) == k
    # 4/8 (0.25) > 2/8 (0.1875) > 8/8 and 0/8 (0, ties kept in candidate order)
    assert [row.index for row in ranked] == [1, 2, 0, 3]


def test_custom_verifier_is_used(monkeypatch):
    _fake_generation(monkeypatch, [8, 8], 4, [1, 2])
    ranked = select_by_pass_variance(None, None, ["a", "b"], [1, 2], k=4, verifier=lambda c, a: a == 2)
    assert [(r.index, r.pass_rate) for r in ranked] == [(0, 0.0), (1, 1.0)]


def test_on_a_tiny_model():
    prompts = ["Compute 1 + 2 .", "Compute 3 - 1 .", "the answer is"]
    ranked = select_by_pass_variance(
        make_tiny_llama(sharpen=4.0),
        make_word_tokenizer(),
        prompts,
        [3, 2, 5],
        k=4,
        max_new_tokens=3,
        progress=False,
    )
    assert sorted(r.index for r in ranked) == [0, 1, 2]
    for row in ranked:
        assert row.num_samples == 4 and len(row.completions) == 4
        assert row.variance == pytest.approx(row.pass_rate * (1 - row.pass_rate))
    assert [r.variance for r in ranked] == sorted((r.variance for r in ranked), reverse=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompts": [], "answers": []}, ValueError, "`prompts` is empty"),
        ({"prompts": ["a"], "answers": [1, 2]}, ValueError, "give one answer each"),
        ({"k": 1}, ValueError, "`k` must be an integer >= 2"),
        ({"verifier": "exact"}, TypeError, "`verifier` must be callable"),
    ],
)
def test_errors(kwargs, error, message):
    arguments = {"prompts": ["a"], "answers": [1], "k": 4, **kwargs}
    with pytest.raises(error, match=message):
        select_by_pass_variance(None, None, **arguments)


def test_cli_select_with_a_jsonl_file(tmp_path, capsys):
    folder = tmp_path / "tiny"
    make_tiny_llama(sharpen=4.0).save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    data = tmp_path / "candidates.jsonl"
    rows = [
        {"prompt": "Compute 1 + 2 .", "answer": 3},
        {"prompt": [{"role": "user", "content": "Compute 2 + 2 ."}], "answer": 4},
    ]
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    output = tmp_path / "ranked.jsonl"
    argv = ["select", "--model", str(folder), "--data", str(data), "--k", "3", "--max-new-tokens", "3"]
    assert main([*argv, "--output", str(output), "--no-progress"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert table[0] == "| rank | prompt | answer | pass rate | variance |"
    assert len(table) == 1 + 2  # header and one row per candidate
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["index"] for r in written) == [0, 1]
    assert all(len(r["completions"]) == 3 for r in written)


def test_cli_select_rejects_a_file_without_answers(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(SystemExit, match="'prompt' and 'answer'"):
        main(["select", "--data", str(data)])
