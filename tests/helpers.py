"""Tiny models and tokenizers built in memory (no files, no network), shared by the tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORD_VOCAB_SIZE = 128
WORD_EOS_ID = 1
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
_WORDS = ["<unk>", "<eos>", *(str(i) for i in range(10)), *"+-.,=?:"]
_WORDS += ["Compute", "Reply", "with", "just", "the", "number", "user", "assistant", "answer", "is"]
_WORDS += [f"w{i}" for i in range(WORD_VOCAB_SIZE - len(_WORDS))]


def make_tiny_llama(
    seed: int = 0,
    vocab_size: int = WORD_VOCAB_SIZE,
    hidden_size: int = 64,
    sharpen: float = 40.0,
    eos_token_id: int | None = WORD_EOS_ID,
    pad_token_id: int | None = WORD_EOS_ID,
) -> LlamaForCausalLM:
    """A seeded 2-layer Llama with its LM head scaled by ``sharpen``: a random model is otherwise
    almost uniform (entropy ~ log V everywhere), which hides position and masking mistakes
    (SPEC.md, "Testing hint"). ``sharpen=1`` keeps the initialisation as it is."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    if sharpen != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(sharpen)
    return model.eval()


def make_word_tokenizer(
    pad: bool = True, chat_template: bool = True, eos: bool = True
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over 128 tokens (digits split one by one), EOS ``<eos>`` (id 1),
    left padding; ``pad=False`` leaves it without a pad token, ``chat_template=False`` without a
    chat template, ``eos=False`` without an EOS token."""
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(),
        ]
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    kwargs = {}
    if eos:
        kwargs["eos_token"] = "<eos>"
    if pad:
        kwargs["pad_token"] = "<eos>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", padding_side="left", **kwargs
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def use_backend(monkeypatch, name: str) -> None:
    """Force em_hf.ops onto one implementation: "cpp" (compiled kernels, or an error) or "torch"."""
    monkeypatch.setenv("EM_HF_ENTROPY_BACKEND", name)


def make_em_trainer(tmp_path, prompts: list, callbacks: list | None = None, **config):
    """An EntropyMinTrainer on a sharpened tiny llama and the word tokenizer, CPU, no saving or
    reporting: 4 steps of 2 prompts x 2 completions of 4 tokens at lr 1e-2 unless ``config`` says
    otherwise (any EntropyMinConfig field)."""
    from em_hf.trainers import EntropyMinConfig, EntropyMinTrainer

    settings = {
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "num_generations": 2,
        "max_completion_length": 4,
        "learning_rate": 1e-2,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    args = EntropyMinConfig(output_dir=str(tmp_path / "out"), **{**settings, **config})
    return EntropyMinTrainer(
        model=make_tiny_llama(sharpen=4.0),
        args=args,
        train_dataset=prompts,
        processing_class=make_word_tokenizer(),
        callbacks=callbacks,
    )


def wait_until_paused(process: subprocess.Popen, folder: Path, timeout_s: float = 300.0) -> None:
    """Wait until the child ``process`` writes ``folder / "paused"`` (its signal that it stopped at the
    planned point); fails with the end of its stderr if it exits or the time runs out first."""
    deadline = time.monotonic() + timeout_s
    while not (folder / "paused").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (folder / "paused").exists(), process.communicate()[1][-3000:]
