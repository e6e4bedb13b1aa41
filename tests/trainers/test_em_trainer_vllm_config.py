"""vLLM rollouts of EntropyMinTrainer without an engine: argument checks, the missing-vLLM error, an
unreachable server, and server mode's request mapping and batch layout through trl's ``VLLMGeneration``
with a fake client. They run with or without vLLM (trl's availability check is patched where needed)."""

from __future__ import annotations

import socket
from typing import ClassVar

import pytest
import torch
import trl.generation.vllm_client as trl_vllm_client
import trl.generation.vllm_generation as trl_vllm_generation
import trl.import_utils as trl_import_utils

from em_hf.generation.prompts import left_pad, render_prompts
from em_hf.trainers import EntropyMinConfig, EntropyMinTrainer
from em_hf.trainers.em_trainer import _repeat_group_size
from em_hf.trainers.vllm_rollouts import _rollouts_class
from tests.helpers import WORD_EOS_ID, make_tiny_llama, make_word_tokenizer
from tests.trainers.test_em_trainer import em_config

PROMPTS = ["Compute 2 + 3", "Compute 4 - 1"]


def _config(tmp_path, **overrides) -> EntropyMinConfig:
    """The trainer tests' config with server-mode vLLM rollouts and non-default sampling settings."""
    settings = {"max_steps": 1, "max_completion_length": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 20}
    settings.update(repetition_penalty=1.1, use_vllm=True, vllm_mode="server")
    settings["vllm_server_base_url"] = "http://127.0.0.1:9"
    settings.update(overrides)
    return em_config(tmp_path, **settings)


@pytest.fixture
def vllm_reported_available(monkeypatch):
    for module in (trl_import_utils, trl_vllm_generation, trl_vllm_client):
        monkeypatch.setattr(module, "is_vllm_available", lambda *args, **kwargs: True)


def test_use_vllm_without_vllm_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setattr(trl_import_utils, "is_vllm_available", lambda *args, **kwargs: False)
    with pytest.raises(ImportError, match="vLLM is not installed: make installs it"):
        _config(tmp_path)
    assert not _config(tmp_path, use_vllm=False).use_vllm  # the vLLM fields are inert without use_vllm


def test_unknown_vllm_mode(vllm_reported_available, tmp_path):
    with pytest.raises(
        ValueError, match=r"`vllm_mode` must be one of \('colocate', 'server'\), got 'remote'"
    ):
        _config(tmp_path, vllm_mode="remote")


def test_unreachable_server(vllm_reported_available, tmp_path):
    with socket.socket() as sock:  # a free loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = _config(tmp_path, vllm_server_base_url=f"http://127.0.0.1:{port}", vllm_server_timeout=0.0)
    with pytest.raises(
        ConnectionError, match=rf"can't be reached at http://127.0.0.1:{port}.*vllm_server_base_url"
    ):
        EntropyMinTrainer(
            make_tiny_llama(), args, train_dataset=PROMPTS, processing_class=make_word_tokenizer()
        )


class FakeClient:
    """Records what trl's VLLMGeneration sends; answers as VLLMClient.generate (prompt-major, n each)."""

    instances: ClassVar[list[FakeClient]] = []

    def __init__(self, base_url=None, group_port=None, connection_timeout=None):
        self.base_url, self.calls, self.synced = base_url, [], []
        FakeClient.instances.append(self)

    def init_communicator(self, device):
        self.device = device

    def update_named_params(self, metadata, params):
        self.synced.append({name: tensor.clone() for name, tensor in params})

    def reset_prefix_cache(self):
        pass

    def generate(self, prompts, features=None, **sampling):
        self.calls.append({"prompts": [list(p) for p in prompts], **sampling})
        completions = []
        for _prompt in prompts:
            for j in range(sampling["n"]):
                # j even: three tokens then EOS; j odd: runs to max_tokens without EOS
                row = (
                    [10 + j, 11, 12, WORD_EOS_ID]
                    if j % 2 == 0
                    else [20 + k for k in range(sampling["max_tokens"])]
                )
                completions.append(row[: sampling["max_tokens"]])
        return {
            "prompt_ids": prompts,
            "completion_ids": completions,
            "logprobs": None,
            "logprob_token_ids": None,
        }


def test_server_mode_request_mapping_and_batch_layout(vllm_reported_available, monkeypatch, tmp_path):
    """trl's own server path (a trainer with CUDA: weights over NCCL), with a fake client; the sync
    without CUDA, through a folder, runs against a real server in test_em_trainer_vllm_server.py."""
    FakeClient.instances.clear()
    monkeypatch.setattr(trl_vllm_generation, "VLLMClient", FakeClient)
    monkeypatch.setattr(_rollouts_class(), "_server_sync_through_folder", lambda self: False)
    tokenizer = make_word_tokenizer()
    model = make_tiny_llama()
    args = _config(tmp_path, generation_kwargs={"min_p": 0.05})
    trainer = EntropyMinTrainer(model, args, train_dataset=PROMPTS, processing_class=tokenizer)
    (client,) = FakeClient.instances
    assert client.base_url == "http://127.0.0.1:9"

    trainer.model.train()
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]  # RepeatSampler order, num_generations=2
    batch = trainer.generate_batch(prompts)

    rows = render_prompts(tokenizer, prompts)
    (call,) = client.calls
    assert call["prompts"] == [rows[0], rows[2]]  # unique prompts as token ids, n per prompt
    assert call["n"] == 2
    assert (call["temperature"], call["top_p"], call["top_k"]) == (0.7, 0.9, 20)
    assert (call["repetition_penalty"], call["max_tokens"], call["logprobs"]) == (1.1, 5, None)
    assert call["generation_kwargs"] == {"stop_token_ids": [WORD_EOS_ID], "min_p": 0.05}
    assert len(client.synced) == 1  # the weights were sent before the first rollouts
    assert torch.equal(client.synced[0]["model.embed_tokens.weight"], model.model.embed_tokens.weight)

    prompt_ids, prompt_mask = left_pad(rows, tokenizer.pad_token_id)
    assert torch.equal(batch["prompt_ids"], prompt_ids) and torch.equal(batch["prompt_mask"], prompt_mask)
    pad = tokenizer.pad_token_id
    eos_row, full_row = [10, 11, 12, WORD_EOS_ID, pad], [20, 21, 22, 23, 24]
    assert batch["completion_ids"].tolist() == [eos_row, full_row, eos_row, full_row]
    assert batch["completion_mask"].tolist() == [[1, 1, 1, 1, 0], [1] * 5, [1, 1, 1, 1, 0], [1] * 5]
    assert trainer._metrics["train"]["completions/clipped_ratio"] == [0.5]

    trainer.generate_batch(prompts)  # same optimizer step: no second sync
    assert len(client.synced) == 1


def test_repeat_group_size():
    a, b = [1, 2], [3]
    assert _repeat_group_size([a, a, b, b], 2) == 2
    assert _repeat_group_size([a, a, a, a], 64) == 4  # a micro-batch of one prompt's 64 repeats
    assert _repeat_group_size([a, b, a, b], 2) == 1
    assert _repeat_group_size([a, a, b], 2) == 1
