"""Evaluation runs that survive interruptions and concurrency, and benchmark files with bad lines:
a resumed run samples what an uninterrupted one would, the template is part of the run's settings,
two runs on one folder cannot both write, malformed lines are reported with their file and line,
and over-long prompts are skipped with a reason."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from em_hf.eval import load_benchmark
from em_hf.eval import runner as runner_module
from em_hf.eval.benchmarks import BenchmarkItem
from em_hf.eval.runner import LOCK_FILE, evaluate, read_records
from em_hf.utils.files import FolderLockedError
from tests.eval import concurrent_run_script
from tests.helpers import make_tiny_llama, wait_until_paused

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def flat_llama():
    """A tiny Llama close to uniform over its 128 tokens: samples differ from draw to draw."""
    return make_tiny_llama(sharpen=1.0)


def _key(record: dict) -> tuple:
    return (record["benchmark"], record["method"], record["seed"], record["item_id"])


def _run(model, tokenizer, out, items, methods=("sample", "sc:2"), **kwargs):
    defaults = dict(seeds=[0, 1], max_new_tokens=3, batch_size=4, progress=False, plot=False)
    return evaluate(model, tokenizer, {"arithmetic": items}, list(methods), out, **{**defaults, **kwargs})


def test_a_resumed_run_samples_what_an_uninterrupted_run_samples(flat_llama, word_tokenizer, tmp_path):
    items = load_benchmark("arithmetic:n=7")
    straight = {_key(r): r for r in _run(flat_llama, word_tokenizer, tmp_path / "straight", items).records}
    samples = [r["completion"] for k, r in straight.items() if k[1] == "sample"]
    assert len(set(samples)) > len(samples) // 2  # the draws really are random
    _run(flat_llama, word_tokenizer, tmp_path / "resumed", items)
    path = tmp_path / "resumed" / "items.jsonl"
    lines = path.read_text().splitlines()
    lost = {"arith-0-1", "arith-0-2", "arith-0-5"}  # what a killed run had not written
    path.write_text("".join(f"{line}\n" for line in lines if json.loads(line)["item_id"] not in lost))
    resumed = _run(flat_llama, word_tokenizer, tmp_path / "resumed", items).records
    assert len(resumed) == len(straight)
    for record in resumed:
        twin = straight[_key(record)]
        assert (record["completion"], record["answers"]) == (twin["completion"], twin["answers"]), _key(
            record
        )


def test_another_template_refuses_to_resume(sharp_llama, word_tokenizer, tmp_path):
    math_like = load_benchmark("arithmetic:n=2", template="Q: {question}")
    _run(sharp_llama, word_tokenizer, tmp_path, math_like, methods=["greedy"])
    with pytest.raises(ValueError, match=r"other settings.*templates\['arithmetic'\].*Q: \{question\}"):
        _run(sharp_llama, word_tokenizer, tmp_path, load_benchmark("arithmetic:n=2"), methods=["greedy"])
    # a benchmark new to the folder is added to its settings
    evaluate(
        sharp_llama, word_tokenizer, {"arithmetic:n=3": load_benchmark("arithmetic:n=3")}, ["greedy"],
        tmp_path,
        max_new_tokens=3, progress=False, plot=False,
    )  # fmt: skip
    templates = json.loads((tmp_path / "config.json").read_text())["templates"]
    assert templates == {"arithmetic": "Q: {question}", "arithmetic:n=3": "{question}"}


def _child(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.eval.concurrent_run_script", str(out), *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_run_is_refused_and_a_killed_run_resumes_to_the_uninterrupted_results(tmp_path):
    """Real processes: the first run stops inside its 5th generation call (holding the folder), a
    second run on the folder is refused, the first is killed with SIGKILL, and the resumed run
    equals an uninterrupted one, with no record written twice."""
    out = tmp_path / "killed"
    out.mkdir()
    first = _child(out, "--pause-after", "4")
    wait_until_paused(first, out)
    second = _child(out)
    assert second.wait(timeout=300) == 3
    assert "Another evaluation is writing to" in second.stderr.read()
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert 0 < len(read_records(out / "items.jsonl")) < 24
    resumed = concurrent_run_script.run(out).records  # the lock died with the first run
    straight = {_key(r): r for r in concurrent_run_script.run(tmp_path / "straight").records}
    assert sorted(_key(r) for r in resumed) == sorted(straight) and len(resumed) == 24  # none twice
    assert all(r["completion"] == straight[_key(r)]["completion"] for r in resumed)


def test_the_lock_dies_with_its_holder(sharp_llama, word_tokenizer, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from em_hf.utils.files import file_lock\n"
            "with file_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)",
            str(tmp_path / LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=rf"held by process {holder.pid}.*another output folder"):
            _run(sharp_llama, word_tokenizer, tmp_path, load_benchmark("arithmetic:n=2"), methods=["greedy"])
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
    run = _run(sharp_llama, word_tokenizer, tmp_path, load_benchmark("arithmetic:n=2"), methods=["greedy"])
    assert len(run.records) == 2


def _item(item_id: str, question: str) -> BenchmarkItem:
    prompt = [{"role": "user", "content": question}]
    return BenchmarkItem(
        "arithmetic", item_id, "arithmetic", question, prompt, reference="7", template="{question}"
    )


def test_over_long_prompts_are_skipped_with_a_reason(
    sharp_llama, word_tokenizer, tmp_path, monkeypatch, capsys
):
    huge = "1 + " * 2_000_000  # 8 MB: never tokenized
    longish = " ".join(["7"] * 300)  # 300 tokens: over the tiny model's 256 - 3
    items = [_item("ok", "Compute 3 + 4"), _item("huge", huge), _item("longish", longish)]
    rendered = []
    original = runner_module.render_prompt
    monkeypatch.setattr(runner_module, "render_prompt", lambda t, p: rendered.append(p) or original(t, p))
    run = _run(sharp_llama, word_tokenizer, tmp_path, items, methods=["greedy"])
    assert [r["item_id"] for r in run.records] == ["ok"]
    reasons = {item_id: reason for _, item_id, reason in run.skipped}
    assert reasons["huge"].startswith("its prompt has 8000000 characters, more than 253 tokens can hold")
    assert (
        reasons["longish"].startswith("its prompt has 30")
        and "tokens, over max_prompt_tokens=253" in reasons["longish"]
    )
    assert all(len(str(p)) < 10_000 for p in rendered)
    assert "note: arithmetic item huge skipped: its prompt has 8000000 characters" in capsys.readouterr().out
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        _run(sharp_llama, word_tokenizer, tmp_path / "other", items, methods=["greedy"], max_prompt_tokens=0)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"question": "1 + 1", "answer": "2"}', "42"], r"amc.jsonl:2: expected a JSON object.*got int 42"),
        (['{"question": "1 + 1", "answer": "2"}', "", '{"question": "x", '], r"amc.jsonl:3: not valid JSON"),
        (
            ['{"question": "1 + 1", "answer": null}'],
            r"amc.jsonl:1: amc item 0: its answer field 'answer' is null",
        ),
        (['{"text": "1 + 1", "answer": "2"}'], r"amc.jsonl:1: amc item 0: it has no question field"),
    ],
)
def test_bad_benchmark_lines_name_the_file_and_line(tmp_path, lines, message):
    (tmp_path / "amc.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        load_benchmark("amc", path=tmp_path)


def test_bad_json_benchmark_files_name_the_file(tmp_path):
    (tmp_path / "math500.json").write_text('[{"problem": "1 + 1", "answer": "2"}, 42]')
    with pytest.raises(ValueError, match=r"math500.json row 2: expected a JSON object"):
        load_benchmark("math500", path=tmp_path)
    (tmp_path / "math500.json").write_text('[{"problem": "1 + 1",\n "answer": }]')
    with pytest.raises(ValueError, match=r"math500.json:2: not valid JSON"):
        load_benchmark("math500", path=tmp_path)
