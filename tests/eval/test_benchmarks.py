"""Benchmark registry: sources in order (path, shared folder, Hub), normalized items, options."""

from __future__ import annotations

import json

import pytest

from em_hf.data.arithmetic import make_arithmetic_problems
from em_hf.eval import BENCHMARKS, load_benchmark
from em_hf.eval.benchmarks import BENCHMARKS_ENV, MATH_TEMPLATE, find_benchmarks_dir, parse_benchmark

EXPECTED_ROWS = {
    "math500": 500,
    "amc": 83,
    "aime": 90,
    "amc23": 40,
    "aime24": 30,
    "minerva": 272,
    "olympiadbench": 675,
    "leetcode": 180,
    "ugphysics": 186,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_every_shared_benchmark_loads(benchmarks_dir, name):
    items = load_benchmark(name)
    assert len(items) == EXPECTED_ROWS[name]
    assert len({item.id for item in items}) == len(items)  # ids are unique keys for resuming
    for item in items:
        assert item.benchmark == name
        assert item.prompt[0]["role"] == "user" and item.question in item.prompt[0]["content"]
        if item.task == "code":
            assert item.tests and "assert" in item.tests
            assert "```python" in item.prompt[0]["content"]
        else:
            assert item.reference and item.reference.strip()
            assert "\\boxed{}" in item.prompt[0]["content"]


def test_first_items_match_the_files(benchmarks_dir):
    math500 = load_benchmark("math500", limit=1)[0]
    assert (math500.id, math500.reference, math500.metadata["level"]) == ("test/algebra/4.json", "4", 1)
    assert math500.prompt[0]["content"] == MATH_TEMPLATE.format(
        question="If $2^8=4^x$, what is the value of $x$?"
    )
    amc = load_benchmark("amc", limit=1)[0]
    assert amc.reference == "142"  # 142.0 in the file
    minerva = load_benchmark("minerva", limit=1)[0]
    assert minerva.reference == "1.6"  # the last box of the gold solution
    ugphysics = load_benchmark("ugphysics", limit=2)
    assert ugphysics[0].references == (r"4.88 \times 10^{23}",)
    assert ugphysics[1].references == (r"c_{V} \sim T^{-2}", r"\text{constant}")  # multiple answers


def test_metadata_filter_and_limit(benchmarks_dir):
    level1 = load_benchmark("math500:level=1")
    raw = json.loads((benchmarks_dir / "math500.json").read_text())
    assert len(level1) == sum(level == "Level 1" for level in raw["level"].values())
    assert all(item.metadata["level"] == 1 for item in level1)
    assert [i.id for i in load_benchmark("math500:level=1", limit=5)] == [i.id for i in level1[:5]]
    with pytest.raises(ValueError, match="no metadata 'colour'"):
        load_benchmark("math500:colour=red")


def test_template_override(benchmarks_dir):
    item = load_benchmark("aime", limit=1, template="Q: {question}\nA:")[0]
    assert item.prompt[0]["content"] == f"Q: {item.question}\nA:"
    with pytest.raises(ValueError, match=r"\{question\}"):
        load_benchmark("aime", template="no placeholder")


def test_user_path_comes_first(tmp_path, monkeypatch):
    rows = [{"id": 7, "question": "What is 2+2?", "answer": 4.0}]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setenv(BENCHMARKS_ENV, str(tmp_path))  # a folder without the registered file
    (item,) = load_benchmark("amc", path=path)
    assert (item.id, item.reference, item.question) == ("7", "4", "What is 2+2?")
    (tmp_path / "amc.jsonl").write_text(path.read_text())
    assert load_benchmark("amc", path=tmp_path)[0].id == "7"  # a folder holding the file
    assert load_benchmark("amc")[0].id == "7"  # found through $EM_HF_BENCHMARKS
    with pytest.raises(FileNotFoundError, match="`path` for benchmark 'amc'"):
        load_benchmark("amc", path=tmp_path / "missing.jsonl")


def test_missing_everywhere_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(BENCHMARKS_ENV, str(tmp_path))  # empty folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"aime.*Hugging Face Hub.*EM_HF_BENCHMARKS"):
        load_benchmark("aime")
    with pytest.raises(FileNotFoundError, match=r"leetcode\.jsonl.*no Hugging Face Hub source"):
        load_benchmark("leetcode")
    monkeypatch.setenv(BENCHMARKS_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_benchmarks_dir()


def test_arithmetic_set_matches_the_package_generator():
    items = load_benchmark("arithmetic:n=7,seed=3")
    problems = make_arithmetic_problems(7, seed=3)
    assert [(i.id, i.reference, i.prompt) for i in items] == [
        (p.id, str(p.answer), p.messages) for p in problems
    ]
    assert [i.metadata["operands"] for i in items[:2]] == [2, 3]
    assert len(load_benchmark("arithmetic", limit=4)) == 4


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("gsm8k", "Unknown benchmark 'gsm8k'"),
        ("amc:level", "key=value"),
        ("arithmetic:size=3", "n= and seed="),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_benchmark(spec)


def test_bad_limit():
    with pytest.raises(ValueError, match="`limit`"):
        load_benchmark("arithmetic", limit=0)


def test_registry_names():
    assert set(EXPECTED_ROWS) | {"arithmetic"} == set(BENCHMARKS)
    assert parse_benchmark(" MATH500:level=2 ") == ("math500", {"level": "2"})


def test_offline_fails_at_once_saying_where_the_file_comes_from_and_its_format(tmp_path, monkeypatch):
    import datasets

    def no_network(*args, **kwargs):
        raise AssertionError("load_dataset must not be called (and retry) when offline")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.setenv(BENCHMARKS_ENV, str(tmp_path))  # empty folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as caught:
        load_benchmark("math500")
    message = str(caught.value)
    for part in (
        "math500.json",  # the file
        "--benchmark-dir",  # where it may be given
        "$EM_HF_BENCHMARKS/math500.json",
        "shared/benchmarks/math500.json",
        "'HuggingFaceH4/MATH-500'",  # the Hub source
        "JSON Lines",  # the format
        "question from 'problem'",  # the keys a row needs
        "answer from 'expected_answer' or 'answer'",
        "not reachable",
    ):
        assert part in message, (part, message)


def test_hub_reachable_follows_the_offline_variables_and_the_endpoint(monkeypatch):
    from em_hf.eval.benchmarks import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub_reachable() is False
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert hub_reachable(timeout_s=1.0) is False


def test_describe_source_of_every_benchmark_names_its_file_or_says_it_is_generated():
    from em_hf.eval.benchmarks import BENCHMARKS, describe_source

    for name, spec in BENCHMARKS.items():
        text = describe_source(spec)
        assert f"Benchmark {name!r}" in text
        assert (spec.filename in text) if spec.filename else ("generated" in text)


def test_default_max_new_tokens_follows_the_tasks():
    from em_hf.eval.benchmarks import MAX_NEW_TOKENS, default_max_new_tokens

    assert default_max_new_tokens(["arithmetic:n=5"]) == MAX_NEW_TOKENS["arithmetic"] == 32
    assert default_max_new_tokens(["leetcode"]) == MAX_NEW_TOKENS["code"]
    assert default_max_new_tokens(["arithmetic", "ugphysics"]) == MAX_NEW_TOKENS["physics"]
    with pytest.raises(ValueError, match="Unknown benchmark"):
        default_max_new_tokens(["gsm8k"])
