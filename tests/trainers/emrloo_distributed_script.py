"""Run by tests/trainers/test_emrloo_distributed.py under ``accelerate launch --num_processes 2 --cpu``:
two steps of EM-RL-token plus the SC-RL reward on a tiny model, with 2 completions per process and 4
per prompt, so that every prompt group is split across the two processes. Each process writes what
it saw to ``<out>/rank<k>.json``.

Usage: emrloo_distributed_script.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from em_hf.rewards import self_consistency_reward
from em_hf.trainers.emrloo_trainer import EMRLOOTrainer
from tests.helpers import make_word_tokenizer
from tests.trainers.emrloo_helpers import load_tiny_llama, make_args, prompt_dataset


def _checksum(model: torch.nn.Module) -> list[float]:
    """Sum and sum of squares of all parameters in float64: equal across ranks iff in sync (in practice)."""
    total = sum(p.detach().double().sum().item() for p in model.parameters())
    squares = sum(p.detach().double().pow(2).sum().item() for p in model.parameters())
    return [total, squares]


def main() -> None:
    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    calls: list[dict] = []

    def recorded_sc_reward(prompts, completions, **kwargs):
        rewards = self_consistency_reward(prompts, completions, **kwargs)
        calls.append(
            {
                "prompts": [p[-1]["content"] for p in prompts],
                "completions": [c[-1]["content"] for c in completions],
                "rewards": rewards,
            }
        )
        return rewards

    args = make_args(
        out_dir,
        em_reward="token",
        reward_weights=[0.5],
        per_device_train_batch_size=2,
        num_generations=4,
        max_steps=2,
        learning_rate=1e-3,
        beta=0.001,
    )
    model = load_tiny_llama(model_dir)
    initial = _checksum(model)
    trainer = EMRLOOTrainer(
        model=model,
        reward_funcs=recorded_sc_reward,
        args=args,
        train_dataset=prompt_dataset(4),
        processing_class=make_word_tokenizer(),
    )
    trainer.train()
    result = {
        "rank": trainer.accelerator.process_index,
        "world_size": trainer.accelerator.num_processes,
        "initial_checksum": initial,
        "final_checksum": _checksum(trainer.accelerator.unwrap_model(trainer.model)),
        "sc_calls": calls,
        "log_history": trainer.state.log_history,
        "global_step": trainer.state.global_step,
    }
    (out_dir / f"rank{result['rank']}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
