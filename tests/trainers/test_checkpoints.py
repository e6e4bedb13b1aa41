"""Checkpoints survive a crash inside a save: ``train(resume_from_checkpoint=True)`` resumes from the
last complete checkpoint, skipping and reporting an incomplete one (EntropyMinTrainer and EMRLOOTrainer).

The crash is real: tests/trainers/checkpoint_kill_script.py stops inside the weights file of a
checkpoint and is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from em_hf.trainers import EMRLOOTrainer
from em_hf.trainers.checkpoints import CHECKPOINT_MANIFEST, checkpoint_problem, last_complete_checkpoint
from tests.helpers import make_tiny_llama, make_word_tokenizer, wait_until_paused
from tests.trainers.emrloo_helpers import make_args
from tests.trainers.test_em_trainer import make_trainer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "tests.trainers.checkpoint_kill_script"


def _script(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", SCRIPT, str(out), *args],
        cwd=ROOT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen) -> tuple[dict[str, str], str]:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("steps", "weights"))), err


def test_a_kill_inside_a_save_resumes_from_the_last_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    victim = _script(out, "--pause-in-save", "3")
    wait_until_paused(victim, out)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert checkpoint_problem(out / "checkpoint-3") is not None  # the torn save
    assert checkpoint_problem(out / "checkpoint-2") is None
    resumed, log = _result(_script(out, "--resume"))
    assert resumed["steps"] == "4"
    assert "Skipping the incomplete checkpoint" in log and "checkpoint-3" in log
    for step in (1, 2, 3, 4):  # checkpoint-3 was saved again, whole
        assert checkpoint_problem(out / f"checkpoint-{step}") is None
    manifest = json.loads((out / "checkpoint-3" / CHECKPOINT_MANIFEST).read_text())
    assert manifest["global_step"] == 3 and "model.safetensors" in manifest["files"]
    uninterrupted, _ = _result(_script(tmp_path / "straight"))
    assert resumed["weights"] == uninterrupted["weights"]  # resuming from step 2 changed nothing


def test_checkpoint_problems_name_the_cause(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    out = Path(trainer.args.output_dir)
    assert last_complete_checkpoint(out) == str(out / "checkpoint-2")
    weights = out / "checkpoint-2" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])
    assert checkpoint_problem(out / "checkpoint-2") == f"model.safetensors has 100 bytes, {size} when saved"
    (out / "checkpoint-1" / "optimizer.pt").unlink()
    assert checkpoint_problem(out / "checkpoint-1") == "optimizer.pt is missing"
    with pytest.raises(ValueError, match=r"holds no complete checkpoint.*checkpoint-1.*checkpoint-2"):
        make_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=r"not a complete checkpoint: model.safetensors has 100 bytes"):
        make_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=str(out / "checkpoint-2"))
    (out / "checkpoint-7").mkdir()  # a save that died before its first file (no manifest, no state)
    assert checkpoint_problem(out / "checkpoint-7") == "no trainer_state.json (its save did not finish)"


def test_emrloo_resumes_from_the_last_complete_checkpoint(tmp_path, caplog):
    directory = tmp_path / "tiny"
    make_tiny_llama(sharpen=4.0).save_pretrained(directory)

    def trainer(max_steps: int) -> EMRLOOTrainer:
        args = make_args(
            tmp_path,
            num_generations=2,
            per_device_train_batch_size=4,
            max_completion_length=4,
            beta=0.0,
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=1,
        )
        prompts = Dataset.from_dict({"prompt": ["Compute 2 + 3", "Compute 4 - 1"]})
        return EMRLOOTrainer(
            str(directory), args=args, train_dataset=prompts, processing_class=make_word_tokenizer()
        )

    trainer(2).train()
    out = Path(tmp_path / "out")
    assert checkpoint_problem(out / "checkpoint-2") is None
    (out / "checkpoint-2" / "trainer_state.json").write_text("{")  # torn at the end of its save
    with caplog.at_level("WARNING", logger="em_hf"):
        result = trainer(3).train(resume_from_checkpoint=True)
    assert "Skipping the incomplete checkpoint" in caplog.text and "checkpoint-2" in caplog.text
    assert result.global_step == 3
    assert checkpoint_problem(out / "checkpoint-2") is None  # saved again
