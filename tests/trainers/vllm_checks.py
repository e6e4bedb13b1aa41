"""What the vLLM rollout tests check: the trainer's own rollout path with greedy sampling, and
``generate``'s greedy continuations with the trainer's current weights, on two chat prompts."""

from __future__ import annotations

import torch

from em_hf.generation.prompts import left_pad, render_prompts

PROMPTS = [
    [{"role": "user", "content": f"Compute {a} + {b}. Reply with just the number."}]
    for a, b in ((2, 9), (7, 5))
]
MAX_NEW = 16


def rollout_config(output_dir: str, **vllm_fields):
    """One optimizer step on vLLM rollouts of ``PROMPTS``, with a learning rate large enough that the
    step changes the greedy continuations; ``vllm_fields`` choose the mode and its settings."""
    from em_hf.trainers import EntropyMinConfig

    return EntropyMinConfig(
        output_dir=output_dir,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=MAX_NEW,
        learning_rate=5e-4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        use_vllm=True,
        **vllm_fields,
    )


def greedy_rollouts(trainer):
    """The trainer's own rollout path (weight sync included) with greedy sampling."""
    engine = trainer.vllm_generation
    temperature, engine.temperature = engine.temperature, 0.0
    try:
        batch = trainer.generate_batch(PROMPTS)
    finally:
        engine.temperature = temperature
    return batch, [
        ids[mask.bool()].tolist()
        for ids, mask in zip(batch["completion_ids"], batch["completion_mask"], strict=True)
    ]


def hf_greedy(model, tokenizer):
    was_training = model.training
    model.eval()
    rows = render_prompts(tokenizer, PROMPTS)
    input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=MAX_NEW, do_sample=False
        )[:, input_ids.shape[1] :]
    model.train(was_training)
    eos = tokenizer.eos_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in out.tolist()]
