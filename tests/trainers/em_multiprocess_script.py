"""Trains a tiny model for 2 steps with EntropyMinTrainer in each of several processes.

Launched by ``tests/trainers/test_em_trainer.py::test_two_cpu_processes_train_in_lockstep`` with
``accelerate launch --cpu --num_processes 2`` (gloo). Each rank writes ``rank{N}.json`` to the folder given
as the first argument: a checksum of its final weights (and of the initial ones), its log history, the
prompts it generated completions for and its own (not gathered) loss of each micro-batch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from em_hf.trainers import EntropyMinConfig, EntropyMinTrainer
from tests.helpers import make_tiny_llama, make_word_tokenizer

PROMPTS = ["Compute 2 + 3", "Compute 4 - 1", "Compute 7 + 8", "Reply with just the number 5"]


def weights_checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def main(out_dir: str) -> None:
    model = make_tiny_llama(sharpen=4.0)
    initial = weights_checksum(model)
    args = EntropyMinConfig(
        output_dir=str(Path(out_dir) / "trainer"),
        max_steps=2,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=6,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        ddp_backend="gloo",
    )
    trainer = EntropyMinTrainer(
        model=model, args=args, train_dataset=PROMPTS, processing_class=make_word_tokenizer()
    )
    seen_prompts: list[list[str]] = []
    generate_batch = trainer.generate_batch

    def recording_generate_batch(prompts):
        seen_prompts.append(list(prompts))
        return generate_batch(prompts)

    trainer.generate_batch = recording_generate_batch
    local_losses: list[tuple[float, int]] = []  # (this rank's loss, its completion tokens) per micro-batch
    compute_loss = trainer.compute_loss

    def recording_compute_loss(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        local_losses.append((loss.item(), int(inputs["completion_mask"].sum())))
        return loss

    trainer.compute_loss = recording_compute_loss
    trainer.train()
    final_model = trainer.accelerator.unwrap_model(trainer.model)
    result = {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "global_step": trainer.state.global_step,
        "initial_checksum": initial,
        "final_checksum": weights_checksum(final_model),
        "log_history": trainer.state.log_history,
        "seen_prompts": seen_prompts,
        "local_losses": local_losses,
    }
    path = Path(out_dir) / f"rank{trainer.args.process_index}.json"
    path.write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
