"""Child process of the checkpoint tests: train a tiny model with checkpoints every step.

``--trainer em`` (EntropyMinTrainer) or ``rloo`` (EMRLOOTrainer). ``--pause-in-save N`` makes the save of
checkpoint-N stop inside its weights file: the file is half written, ``paused`` is created in the output
folder and the process sleeps until it is killed (the test sends SIGKILL: a crash at a known point).
``--resume`` passes ``resume_from_checkpoint=True``. Prints ``steps <global_step>`` and ``weights <sha256>``
at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import safetensors.torch
import transformers.modeling_utils

from tests.helpers import make_tiny_llama, make_word_tokenizer

PROMPTS = ["Compute 2 + 3", "Compute 4 - 1", "Compute 7 + 8", "Reply with just the number 5"]


def _pause_in_save(out: Path, step: int) -> None:
    original = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if f"checkpoint-{step}" in str(filename):
            original(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])  # the write that was interrupted
            (out / "paused").touch()
            while True:
                time.sleep(60)
        return original(tensors, filename, metadata=metadata)

    transformers.modeling_utils.safe_save_file = save_file


def _trainer(kind: str, out: Path):
    common = dict(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        max_completion_length=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="steps",
        save_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    model = make_tiny_llama(sharpen=4.0)
    if kind == "em":
        from em_hf.trainers import EntropyMinConfig, EntropyMinTrainer

        args = EntropyMinConfig(num_generations=2, **common)
        return EntropyMinTrainer(model, args, train_dataset=PROMPTS, processing_class=make_word_tokenizer())
    from datasets import Dataset

    from em_hf.trainers import EMRLOOConfig, EMRLOOTrainer

    args = EMRLOOConfig(num_generations=2, beta=0.0, **common)
    return EMRLOOTrainer(
        model,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=make_word_tokenizer(),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--trainer", choices=("em", "rloo"), default="em")
    parser.add_argument("--pause-in-save", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if args.pause_in_save is not None:
        _pause_in_save(out, args.pause_in_save)
    trainer = _trainer(args.trainer, out)
    result = trainer.train(resume_from_checkpoint=True if args.resume else None)
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().numpy().tobytes())
    print("steps", result.global_step)
    print("weights", digest.hexdigest())


if __name__ == "__main__":
    main()
