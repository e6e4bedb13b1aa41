"""EntropyMinTrainer end to end on tiny models: input checks, the rollout batch layout, logged metrics,
training (entropy falls; gradient accumulation, gradient checkpointing, LoRA, 8-bit + LoRA), resuming from a
checkpoint and two CPU processes. The loss itself is checked against an independent computation in
test_em_loss.py."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

from em_hf.trainers import EntropyMinConfig, EntropyMinTrainer
from tests.helpers import WORD_EOS_ID, make_tiny_llama, make_word_tokenizer
from tests.trainers.test_em_loss import hand_built_batch

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Compute 2 + 3", "Compute 4 - 1", "Compute 7 + 8", "Reply with just the number 5"]
STEP_METRICS = ("loss", "entropy", "completions/mean_length", "completions/clipped_ratio", "step_time")


def em_config(tmp_path, **overrides) -> EntropyMinConfig:
    values = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_prompt_length": 32,
        "max_completion_length": 6,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    values.update(overrides)
    return EntropyMinConfig(**values)


def make_trainer(
    tmp_path, model=None, tokenizer=None, train_dataset=PROMPTS, **overrides
) -> EntropyMinTrainer:
    return EntropyMinTrainer(
        model=make_tiny_llama(sharpen=4.0) if model is None else model,
        args=em_config(tmp_path, **overrides),
        train_dataset=train_dataset,
        processing_class=make_word_tokenizer() if tokenizer is None else tokenizer,
    )


def record_batches(trainer: EntropyMinTrainer) -> list[dict[str, torch.Tensor]]:
    """Keep every batch ``generate_batch`` builds during training."""
    batches: list[dict[str, torch.Tensor]] = []
    generate_batch = trainer.generate_batch

    def recording(prompts):
        batch = generate_batch(prompts)
        batches.append({key: value.clone() for key, value in batch.items()})
        return batch

    trainer.generate_batch = recording
    return batches


def step_logs(trainer: EntropyMinTrainer) -> list[dict[str, float]]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def rendered(tokenizer, prompt: str) -> list[int]:
    """A string prompt's ids (trl's standard format: tokenized as it is, no chat template)."""
    return list(tokenizer(prompt)["input_ids"])


# --------------------------------------------------------------------------------------------- input errors
@pytest.mark.parametrize(
    "dataset",
    [Dataset.from_dict({"question": PROMPTS}), [{"question": p} for p in PROMPTS]],
    ids=["Dataset", "list-of-dicts"],
)
def test_dataset_without_prompt_column_is_rejected(tmp_path, dataset):
    with pytest.raises(ValueError, match=r"no 'prompt' column.*rename_column"):
        make_trainer(tmp_path, train_dataset=dataset)


@pytest.mark.parametrize("dataset", [Dataset.from_dict({"prompt": []}), []], ids=["Dataset", "list"])
def test_empty_dataset_is_rejected(tmp_path, dataset):
    with pytest.raises(ValueError, match="`train_dataset` is empty"):
        make_trainer(tmp_path, train_dataset=dataset)


def test_empty_eval_dataset_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="`eval_dataset` is empty"):
        EntropyMinTrainer(
            model=make_tiny_llama(),
            args=em_config(tmp_path),
            train_dataset=PROMPTS,
            eval_dataset=[],
            processing_class=make_word_tokenizer(),
        )


def test_tokenizer_without_pad_token_is_rejected_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=re.escape("tokenizer.pad_token = tokenizer.eos_token")):
        make_trainer(tmp_path, tokenizer=make_word_tokenizer(pad=False))


def test_chat_prompts_need_a_chat_template(tmp_path):
    messages = [[{"role": "user", "content": "Compute 2 + 3"}]]
    with pytest.raises(ValueError, match="no chat template"):
        make_trainer(tmp_path, tokenizer=make_word_tokenizer(chat_template=False), train_dataset=messages)


def test_prompt_of_another_type_is_rejected(tmp_path):
    with pytest.raises(
        TypeError, match=r"A prompt must be a string \(standard format\) or a non-empty list of chat messages"
    ):
        make_trainer(tmp_path, train_dataset=[{"prompt": 5}])


def test_args_must_be_an_entropy_min_config(tmp_path):
    with pytest.raises(TypeError, match="EntropyMinConfig"):
        EntropyMinTrainer(
            model=make_tiny_llama(),
            args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
            train_dataset=PROMPTS,
            processing_class=make_word_tokenizer(),
        )


def test_model_object_needs_a_processing_class(tmp_path):
    with pytest.raises(ValueError, match="`processing_class`"):
        EntropyMinTrainer(model=make_tiny_llama(), args=em_config(tmp_path), train_dataset=PROMPTS)


def test_peft_config_must_be_a_peft_config(tmp_path):
    with pytest.raises(TypeError, match=r"peft\.PeftConfig"):
        EntropyMinTrainer(
            model=make_tiny_llama(),
            args=em_config(tmp_path),
            train_dataset=PROMPTS,
            processing_class=make_word_tokenizer(),
            peft_config={"r": 4},
        )


@pytest.mark.parametrize("missing", ["prompt_mask", "completion_ids", "completion_mask"])
def test_hand_built_batch_missing_a_key_is_rejected(tmp_path, missing):
    trainer = make_trainer(tmp_path, model=make_tiny_llama())
    batch = hand_built_batch()
    del batch[missing]
    with pytest.raises(KeyError, match=missing):
        trainer.compute_loss(trainer.model, batch)


def test_hand_built_batch_with_nothing_to_score_is_rejected(tmp_path):
    trainer = make_trainer(tmp_path, model=make_tiny_llama())
    batch = hand_built_batch()
    batch["completion_mask"] = torch.zeros_like(batch["completion_mask"])
    with pytest.raises(ValueError, match="`completion_mask` selects no token"):
        trainer.compute_loss(trainer.model, batch)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda b: b.update(completion_mask=b["completion_mask"][:, :-1]), ValueError, "same shape"),
        (
            lambda b: b.update(prompt_ids=b["prompt_ids"][:2], prompt_mask=b["prompt_mask"][:2]),
            ValueError,
            "rows",
        ),
        (lambda b: b.update(completion_ids=b["completion_ids"].float()), TypeError, "integer tensor"),
        (lambda b: b.update(prompt_ids=b["prompt_ids"][0]), ValueError, "2-D tensor"),
    ],
    ids=["mask-shape", "row-count", "float-ids", "1-D"],
)
def test_malformed_hand_built_batch_is_rejected(tmp_path, change, error, message):
    trainer = make_trainer(tmp_path, model=make_tiny_llama())
    batch = hand_built_batch()
    change(batch)
    with pytest.raises(error, match=message):
        trainer.compute_loss(trainer.model, batch)


def test_compute_loss_does_not_return_outputs(tmp_path):
    trainer = make_trainer(tmp_path, model=make_tiny_llama())
    with pytest.raises(ValueError, match="does not return model outputs"):
        trainer.compute_loss(trainer.model, hand_built_batch(), return_outputs=True)


# --------------------------------------------------------------------------------------- prompts and rollouts
def test_long_prompt_is_truncated_from_the_left_with_one_warning(tmp_path):
    tokenizer = make_word_tokenizer()
    trainer = make_trainer(tmp_path, tokenizer=tokenizer, max_prompt_length=6)
    long_prompt, short_prompt = "Compute 1 + 2 + 3 + 4 + 5", "5"
    long_ids, short_ids = rendered(tokenizer, long_prompt), rendered(tokenizer, short_prompt)
    assert len(long_ids) > 6 > len(short_ids)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = trainer.generate_batch([long_prompt, short_prompt])
        second = trainer.generate_batch([short_prompt, long_prompt])
    truncation = [w for w in caught if "max_prompt_length=6" in str(w.message)]
    assert len(truncation) == 1
    assert "truncated from the left" in str(truncation[0].message)
    # The END of the long prompt (next to the answer) is kept; the short one is left-padded.
    assert first["prompt_ids"][0].tolist() == long_ids[-6:]
    assert first["prompt_mask"][0].tolist() == [1] * 6
    assert first["prompt_ids"][1].tolist() == [tokenizer.pad_token_id] * (6 - len(short_ids)) + short_ids
    assert first["prompt_mask"][1].tolist() == [0] * (6 - len(short_ids)) + [1] * len(short_ids)
    assert second["prompt_ids"][1].tolist() == long_ids[-6:]


def test_plain_string_prompts_without_chat_template_are_used_as_they_are(tmp_path):
    tokenizer = make_word_tokenizer(chat_template=False)
    trainer = make_trainer(tmp_path, tokenizer=tokenizer)
    batch = trainer.generate_batch(["Compute 2 + 3"])
    assert batch["prompt_ids"][0].tolist() == tokenizer("Compute 2 + 3")["input_ids"]


def test_generated_batch_is_in_trl_layout(tmp_path):
    """Left-padded prompts with their mask; completion mask 1 through the first EOS and 0 after it, and
    pad ids after the EOS. A near-uniform model with 12 EOS ids makes the rows stop at different steps."""
    tokenizer = make_word_tokenizer()
    tokenizer.pad_token = "w3"  # a pad id other than the EOS ids, to see where padding goes
    pad = tokenizer.pad_token_id
    eos_ids = list(range(40, 52))
    assert pad not in eos_ids and WORD_EOS_ID not in eos_ids
    width = 8
    trainer = make_trainer(
        tmp_path,
        model=make_tiny_llama(sharpen=1.0),
        tokenizer=tokenizer,
        max_completion_length=width,
        generation_kwargs={"eos_token_id": eos_ids},
    )
    prompts = ["5", "Compute 2 + 3", "Compute 1 + 2 + 3 + 4", "Reply with just the number 7"] * 2
    torch.manual_seed(0)
    batch = trainer.generate_batch(prompts)

    longest = max(len(rendered(tokenizer, p)) for p in prompts)
    assert batch["prompt_ids"].shape == batch["prompt_mask"].shape == (len(prompts), longest)
    # generate stops when every row has stopped; here one row runs to max_completion_length
    assert batch["completion_ids"].shape == batch["completion_mask"].shape == (len(prompts), width)
    lengths, truncated = [], []
    for row, prompt in enumerate(prompts):
        ids = rendered(tokenizer, prompt)
        padding = longest - len(ids)
        assert batch["prompt_ids"][row].tolist() == [pad] * padding + ids
        assert batch["prompt_mask"][row].tolist() == [0] * padding + [1] * len(ids)
        completion = batch["completion_ids"][row].tolist()
        eos_at = [j for j, token in enumerate(completion) if token in eos_ids]
        length = eos_at[0] + 1 if eos_at else width
        assert batch["completion_mask"][row].tolist() == [1] * length + [0] * (width - length)
        assert completion[length:] == [pad] * (width - length)
        assert pad not in completion[:length]
        lengths.append(length)
        truncated.append(not eos_at)
    # The batch exercised what it is meant to: an EOS in mid-completion and rows of different lengths.
    assert min(lengths) < width - 1
    assert len(set(lengths)) > 2
    assert any(truncated)
    metrics = trainer._metrics["eval"]  # the model is in eval mode
    assert metrics["completions/mean_length"] == [pytest.approx(sum(lengths) / len(lengths))]
    assert metrics["completions/clipped_ratio"] == [pytest.approx(sum(truncated) / len(truncated))]


def test_each_prompt_is_repeated_num_generations_times_in_a_row(tmp_path):
    trainer = make_trainer(tmp_path, per_device_train_batch_size=6, num_generations=3)
    seen = [example["prompt"] for batch in trainer.get_train_dataloader() for example in batch]
    assert len(seen) == 3 * len(PROMPTS)
    groups = [seen[i : i + 3] for i in range(0, len(seen), 3)]
    assert all(len(set(group)) == 1 for group in groups)
    assert sorted(group[0] for group in groups) == sorted(PROMPTS)


# --------------------------------------------------------------------------------------------- training
def mean_next_token_entropy(model, tokenizer) -> float:
    """Independent probe: float64 entropy of the first completion token's distribution, mean over PROMPTS."""
    values = []
    with torch.no_grad():
        for prompt in PROMPTS:
            logits = model(input_ids=torch.tensor([rendered(tokenizer, prompt)])).logits[0, -1].double()
            logp = torch.log_softmax(logits, dim=-1)
            values.append(-(logp.exp() * logp).sum().item())
    return sum(values) / len(values)


def test_entropy_falls_over_a_few_steps(tmp_path):
    tokenizer = make_word_tokenizer()
    model = make_tiny_llama(sharpen=4.0)
    before = mean_next_token_entropy(model, tokenizer)
    trainer = make_trainer(tmp_path, model=model, tokenizer=tokenizer, max_steps=4, learning_rate=1e-2)
    trainer.train()
    after = mean_next_token_entropy(trainer.model, tokenizer)
    logged = [entry["entropy"] for entry in step_logs(trainer)]
    assert len(logged) == 4
    assert logged[-1] < logged[0] - 0.5
    assert after < before - 0.5


def test_each_step_logs_loss_entropy_lengths_and_step_time(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    batches = record_batches(trainer)
    trainer.train()
    logs = step_logs(trainer)
    assert len(logs) == len(batches) == 2
    for entry, batch in zip(logs, batches, strict=True):
        assert all(key in entry for key in STEP_METRICS), entry
        assert "kl" not in entry
        # token_mean, beta = 0, one micro-batch per step: the loss IS the mean token entropy
        assert entry["loss"] == pytest.approx(entry["entropy"], rel=1e-5)
        lengths = batch["completion_mask"].sum(dim=1).float()
        assert entry["completions/mean_length"] == pytest.approx(lengths.mean().item())
        clipped = (batch["completion_mask"][:, -1] == 1).float().mean().item()  # no EOS before the last token
        assert entry["completions/clipped_ratio"] == pytest.approx(clipped)
        assert entry["step_time"] > 0


def test_kl_is_logged_and_enters_the_loss_when_beta_is_positive(tmp_path):
    beta = 0.5
    trainer = make_trainer(tmp_path, max_steps=2, beta=beta, learning_rate=1e-2)
    trainer.train()
    logs = step_logs(trainer)
    assert all("kl" in entry for entry in logs)
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step's policy is the reference
    assert logs[1]["kl"] > 1e-6
    for entry in logs:  # token_mean: mean(H + beta KL) = mean H + beta mean KL
        assert entry["loss"] == pytest.approx(entry["entropy"] + beta * entry["kl"], rel=1e-5, abs=1e-7)


def test_evaluate_reports_the_em_loss_of_the_eval_prompts(tmp_path):
    trainer = EntropyMinTrainer(
        model=make_tiny_llama(sharpen=4.0),
        args=em_config(tmp_path, per_device_eval_batch_size=4),
        train_dataset=PROMPTS,
        eval_dataset=PROMPTS[:2],
        processing_class=make_word_tokenizer(),
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0
    logged = trainer.state.log_history[-1]  # the EM metrics are added to the logged dict
    assert logged["eval_loss"] == metrics["eval_loss"]
    assert logged["eval_entropy"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert 1 <= logged["eval_completions/mean_length"] <= 6
    assert metrics["eval_entropy"] == logged["eval_entropy"]  # returned by evaluate() too
    assert not trainer._metrics["eval"]  # emptied once logged


def test_gradient_accumulation_averages_the_micro_batch_gradients(tmp_path):
    """One SGD step with 2 accumulated micro-batches moves the weights by -lr * (g_1 + g_2) / 2, g_i the
    gradient of compute_loss on micro-batch i with the initial weights."""
    lr = 0.05
    model = make_tiny_llama(sharpen=4.0)
    initial = copy.deepcopy(model)
    trainer = make_trainer(
        tmp_path,
        model=model,
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        optim="sgd",
        learning_rate=lr,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,  # no clipping
        weight_decay=0.0,
    )
    batches = record_batches(trainer)
    trainer.train()
    assert trainer.state.global_step == 1
    assert len(batches) == 2
    losses = []
    grads = {name: torch.zeros_like(param) for name, param in initial.named_parameters()}
    for batch in batches:
        initial.zero_grad()
        loss = trainer.compute_loss(initial, batch)
        loss.backward()
        losses.append(loss.item())
        for name, param in initial.named_parameters():
            grads[name] += param.grad / len(batches)
    assert step_logs(trainer)[0]["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    trained = dict(trainer.model.named_parameters())
    for name, param in initial.named_parameters():
        expected = param.detach() - lr * grads[name]
        torch.testing.assert_close(trained[name].detach(), expected, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(trained["lm_head.weight"], initial.lm_head.weight)


def test_gradient_checkpointing_trains_and_gives_the_same_gradients(tmp_path):
    model = make_tiny_llama()
    trainer = make_trainer(tmp_path, model=copy.deepcopy(model), gradient_checkpointing=True)
    trainer.train()
    assert trainer.state.global_step == 2
    assert all("loss" in entry for entry in step_logs(trainer))
    assert not torch.equal(trainer.model.lm_head.weight, model.lm_head.weight)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        net = copy.deepcopy(model).train()
        if checkpointing:
            net.gradient_checkpointing_enable()
        trainer.compute_loss(net, hand_built_batch()).backward()
        return {name: param.grad for name, param in net.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def test_lora_training_changes_only_the_adapters(tmp_path):
    model = make_tiny_llama(sharpen=4.0)
    base_before = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = EntropyMinTrainer(
        model=model,
        args=em_config(tmp_path, learning_rate=1e-2),
        train_dataset=PROMPTS,
        processing_class=make_word_tokenizer(),
        peft_config=lora_config(),
    )
    adapters_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert adapters_before
    trainer.train()
    assert trainer.state.global_step == 2
    after = trainer.model.named_parameters()
    changed = {n for n, p in after if n in adapters_before and not torch.equal(p, adapters_before[n])}
    assert {n for n in adapters_before if "lora_B" in n} <= changed
    base_after = trainer.model.get_base_model().state_dict()
    for name, value in base_before.items():
        key = name if name in base_after else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(base_after[key], value), name


def test_8bit_base_model_with_lora_trains(tmp_path):
    pytest.importorskip("bitsandbytes", reason="8-bit loading needs bitsandbytes")
    from em_hf.models import load_model

    folder = tmp_path / "tiny"
    make_tiny_llama(sharpen=4.0).save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    try:
        model, tokenizer = load_model(folder, load_in_8bit=True)
        with torch.no_grad():  # bitsandbytes' 8-bit matmul must run on this device
            model(input_ids=torch.tensor([[5, 6, 7]]))
    except (RuntimeError, NotImplementedError) as error:
        pytest.skip(f"bitsandbytes cannot run an 8-bit model on this device: {error}")
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == torch.int8
    int8_before = {n: v.clone() for n, v in model.state_dict().items() if v.dtype == torch.int8}
    assert int8_before
    trainer = EntropyMinTrainer(
        model=model,
        args=em_config(tmp_path, learning_rate=1e-2, per_device_train_batch_size=2),
        train_dataset=PROMPTS[:1],
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    adapters_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="MatMul8bitLt")
        trainer.train()
    assert trainer.state.global_step == 2
    logs = step_logs(trainer)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logs)
    params = dict(trainer.model.named_parameters())
    assert all(not torch.equal(params[n], before) for n, before in adapters_before.items())
    int8_after = {
        n: v for n, v in trainer.model.get_base_model().state_dict().items() if v.dtype == torch.int8
    }
    assert len(int8_after) == len(int8_before)
    for name, value in int8_before.items():
        key = name if name in int8_after else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(int8_after[key], value), name


def test_resumed_run_reproduces_the_uninterrupted_run(tmp_path):
    """Checkpoint-2 sits at an epoch boundary (4 prompts x 2 completions = 2 steps of 4): the resumed run
    must replay epoch 1's prompt order (not epoch 0's) and the generation RNG, so the final weights are the
    uninterrupted run's, bit for bit."""

    def run(output: Path, resume: str | None = None) -> tuple[EntropyMinTrainer, list[dict]]:
        trainer = make_trainer(
            tmp_path,
            max_steps=4,
            output_dir=str(output),
            save_strategy="steps",
            save_steps=2,
            learning_rate=1e-2,
        )
        batches = record_batches(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, batches

    full, full_batches = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "rng_state.pth").is_file()
    resumed, resumed_batches = run(tmp_path / "resumed", resume=str(checkpoint))
    assert full.state.global_step == resumed.state.global_step == 4
    assert len(resumed_batches) == 2
    for expected, got in zip(full_batches[2:], resumed_batches, strict=True):
        for key in expected:
            assert torch.equal(expected[key], got[key]), key
    # the resumed run's history starts with the checkpoint's (steps 1-2)
    assert [e["loss"] for e in step_logs(full)] == [e["loss"] for e in step_logs(resumed)]
    resumed_params = dict(resumed.model.named_parameters())
    for name, param in full.model.named_parameters():
        assert torch.equal(param, resumed_params[name]), name


# --------------------------------------------------------------------------------------------- two processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_train_in_lockstep(tmp_path):
    """torchrun starts 2 CPU processes (gloo; `accelerate launch --cpu` runs multi-CPU jobs through mpirun
    only); both must end with the same weights and the same logged metrics after 2 steps."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(REPO_ROOT / "tests" / "trainers" / "em_multiprocess_script.py"),
        str(tmp_path),
    ]
    # A session of its own, so that a hung run can be ended with all the workers torchrun started.
    process = subprocess.Popen(
        command,
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the 2-process run did not finish in 120 s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-6000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, report in enumerate(ranks):
        assert report["rank"] == rank
        assert report["world_size"] == 2
        assert report["distributed_type"].endswith("MULTI_CPU")
        assert report["global_step"] == 2
        assert report["final_checksum"] != report["initial_checksum"]  # training ran
    assert ranks[0]["final_checksum"] == ranks[1]["final_checksum"]
    # Each rank generated for its own share of the prompts (sharded, not duplicated).
    assert [len(seen) for seen in ranks[0]["seen_prompts"]] == [2, 2]
    assert ranks[0]["seen_prompts"][0] != ranks[1]["seen_prompts"][0]

    def step_entries(report):
        return [entry for entry in report["log_history"] if "loss" in entry]

    logs = [step_entries(report) for report in ranks]
    assert len(logs[0]) == len(logs[1]) == 2
    for left, right in zip(*logs, strict=True):
        assert all(key in left for key in STEP_METRICS)
        for key in ("loss", "entropy", "grad_norm", "completions/mean_length", "completions/clipped_ratio"):
            assert left[key] == right[key], key
    # The logged entropy is the token-weighted mean over BOTH ranks' completions (token_mean, beta = 0: each
    # rank's loss is its own mean token entropy).
    for step, entry in enumerate(logs[0]):
        local = [report["local_losses"][step] for report in ranks]
        assert local[0][0] != local[1][0]
        expected = sum(loss * tokens for loss, tokens in local) / sum(tokens for _, tokens in local)
        assert entry["entropy"] == pytest.approx(expected, rel=1e-5)


def test_one_shot_checkpoints_hold_the_model_and_a_left_padding_tokenizer_only(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = make_word_tokenizer()
    tokenizer.padding_side = "right"  # a user's tokenizer as it may come
    tokenizer.init_kwargs.pop("padding_side", None)
    args = EntropyMinConfig.one_shot(
        output_dir=str(tmp_path / "out"),
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=4,
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = EntropyMinTrainer(
        model=make_tiny_llama(), args=args, train_dataset=PROMPTS[:1], processing_class=tokenizer
    )
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    files = {path.name for path in checkpoint.iterdir()}
    assert "model.safetensors" in files and "trainer_state.json" in files
    assert not files & {"optimizer.pt", "scheduler.pt", "rng_state.pth"}, files  # weights only
    trainer.save_model(str(tmp_path / "saved"))
    for folder in (checkpoint, tmp_path / "saved"):
        reloaded = AutoTokenizer.from_pretrained(folder)
        assert (reloaded.padding_side, reloaded.pad_token) == ("left", tokenizer.pad_token)
