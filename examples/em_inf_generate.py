"""EM-INF in `model.generate`: one extra argument.

    python examples/em_inf_generate.py                # the embedded SmolLM2-135M-Instruct
    python examples/em_inf_generate.py --model PATH   # any causal LM folder or Hub id (local cache)

Samples the same prompts with and without EntropyMinLogitsProcessor and prints the answers with the
model's mean token entropy along each answer.
"""

from __future__ import annotations

import argparse

import torch
from transformers import LogitsProcessorList

from em_hf import EntropyMinLogitsProcessor, TokenEntropyRecorder, load_model
from em_hf.generation.recording import completion_mask

PROMPTS = ["Compute 17 + 8. Reply with just the number.", "Compute 13 - 5 + 9. Reply with just the number."]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)  # tokenizer pads on the left
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in PROMPTS
    ]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    for name, processors in [
        ("plain sampling", []),
        ("EM-INF", [EntropyMinLogitsProcessor(threshold=0.3, n_steps=3, lr=0.1)]),
    ]:
        recorder = TokenEntropyRecorder()  # first in the list: measures the model's own entropy
        torch.manual_seed(0)
        output = model.generate(
            **inputs,
            do_sample=True,
            temperature=args.temperature,
            top_k=0,
            max_new_tokens=24,
            logits_processor=LogitsProcessorList([recorder, *processors]),
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        mask = completion_mask(new_tokens, model.generation_config.eos_token_id)
        entropy = (recorder.entropies * mask).sum(1) / mask.sum(1)
        print(f"== {name}")
        for prompt, answer, h in zip(
            PROMPTS, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), entropy, strict=True
        ):
            print(f"{prompt!r} -> {answer!r}  (mean token entropy {h:.3f} nats)")


if __name__ == "__main__":
    main()
