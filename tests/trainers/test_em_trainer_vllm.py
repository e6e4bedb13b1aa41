"""Rollouts from vLLM on this machine's CPU vLLM, default model (``slow``; skipped without vLLM).

EntropyMinTrainer, colocate: the engine's greedy continuations equal ``generate``'s with the trainer's
current weights, before a training step and after it (the step changes them: the engine got the new
weights). EMRLOOTrainer runs trl's own ``use_vllm=True`` colocate path (own process), same check.
One engine per process; 3.5 minutes for both on 2 shared cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from em_hf.generation.prompts import left_pad, render_prompts
from tests.trainers.vllm_checks import PROMPTS, greedy_rollouts, hf_greedy, rollout_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: make installs it"
    ),
]

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def colocated(tmp_path_factory):
    """An EntropyMinTrainer with a colocated engine (one per module), its model and tokenizer."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from em_hf.models import ensure_default_model_cache, load_model
    from em_hf.trainers import EntropyMinTrainer

    model, tokenizer = load_model(ensure_default_model_cache())
    args = rollout_config(
        str(tmp_path_factory.mktemp("em-vllm")),
        vllm_mode="colocate",
        vllm_max_model_length=512,
        vllm_engine_kwargs={"dtype": "float32", "enforce_eager": True},
    )
    trainer = EntropyMinTrainer(model=model, args=args, train_dataset=PROMPTS, processing_class=tokenizer)
    yield trainer, model, tokenizer
    del trainer.vllm_generation.llm
    if torch.distributed.is_initialized():  # vLLM's external launcher set up a 1-process group
        torch.distributed.destroy_process_group()


def test_colocated_rollouts_follow_the_current_weights(colocated):
    trainer, model, tokenizer = colocated
    batch, before = greedy_rollouts(trainer)
    # trl's layout: the rendered prompts left-padded, completions through the first EOS
    prompt_ids, prompt_mask = left_pad(render_prompts(tokenizer, PROMPTS), tokenizer.pad_token_id)
    assert torch.equal(batch["prompt_ids"], prompt_ids) and torch.equal(batch["prompt_mask"], prompt_mask)
    assert before == hf_greedy(model, tokenizer)

    trainer.train()  # one optimizer step on vLLM rollouts (sampled at T=1)
    assert trainer.state.global_step == 1
    log = trainer.state.log_history[0]
    assert log["completions/mean_length"] > 0 and "entropy" in log

    _, after = greedy_rollouts(trainer)  # the engine gets the step's weights first
    assert trainer._last_loaded_step == 1
    assert after == hf_greedy(model, tokenizer)
    assert after != before, "the step did not change the greedy continuations; raise the learning rate"


def test_emrloo_trl_vllm_colocate():
    script = REPO_ROOT / "tests" / "trainers" / "emrloo_vllm_script.py"
    # not the rendezvous variables the colocated engine of this process set (its port is taken)
    distributed = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    env = {key: value for key, value in os.environ.items() if key not in distributed}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=str(REPO_ROOT), MASTER_PORT="auto")
    done = subprocess.run(
        [sys.executable, str(script), "5e-4"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=REPO_ROOT,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    steps = [entry for entry in result["log_history"] if "rewards/em_token/mean" in entry]
    assert len(steps) == 2  # two steps: the second one's rollouts came after a weight sync
    assert result["vllm"] == result["hf"]
