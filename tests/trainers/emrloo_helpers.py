"""Shared set-up of the EMRLOOTrainer tests: a sharpened tiny Llama saved to disk (trl reloads the KL
reference model from the policy's path), the word tokenizer and small conversational prompt sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from em_hf.trainers.emrloo_config import EMRLOOConfig
from tests.helpers import WORD_EOS_ID, make_tiny_llama

# Small, fast, CPU-only, no logging or checkpoints; tests override what they need.
FAST_ARGS: dict[str, Any] = {
    "num_generations": 4,
    "per_device_train_batch_size": 8,
    "max_completion_length": 8,
    "max_steps": 1,
    "learning_rate": 1e-3,
    "beta": 0.001,
    "bf16": False,
    "gradient_checkpointing": False,
    "report_to": [],
    "logging_steps": 1,
    "save_strategy": "no",
    "use_cpu": True,
    "seed": 0,
}


def save_tiny_llama(directory: Path) -> Path:
    """The sharpened tiny Llama over the word tokenizer's 128 tokens (EOS = pad = 1), saved. Its EOS
    row of the LM head copies that of token 96, a frequent one, so that completions of 8 tokens
    sometimes stop early (EOS inside, right padding after it) and sometimes run to the end."""
    model = make_tiny_llama(seed=0)
    with torch.no_grad():
        model.lm_head.weight[WORD_EOS_ID] = model.lm_head.weight[96]
    model.save_pretrained(directory)
    return directory


def load_tiny_llama(directory: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(directory)


def prompt_messages(n: int) -> list[list[dict[str, str]]]:
    """``n`` distinct chat prompts in the word tokenizer's vocabulary."""
    return [[{"role": "user", "content": f"Compute {i % 10} + {(3 * i + 1) % 10} ?"}] for i in range(n)]


def prompt_dataset(n: int) -> Dataset:
    return Dataset.from_dict({"prompt": prompt_messages(n)})


def make_args(tmp_path: Path, **overrides: Any) -> EMRLOOConfig:
    return EMRLOOConfig(output_dir=str(tmp_path / "out"), **{**FAST_ARGS, **overrides})


def generation_batch(prompts: list, num_generations: int) -> list[dict[str, Any]]:
    """What trl's RepeatSampler hands ``_generate_and_score_completions``: each prompt repeated
    ``num_generations`` times in a row."""
    return [{"prompt": p} for p in prompts for _ in range(num_generations)]
