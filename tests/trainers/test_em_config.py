"""EntropyMinConfig: the papers' presets (SPEC.md methods 1 and 2) and the checks of the EM fields."""

from __future__ import annotations

import math

import pytest
from transformers import SchedulerType, TrainingArguments

from em_hf.trainers import EntropyMinConfig


def test_config_is_training_arguments_with_em_defaults(tmp_path):
    config = EntropyMinConfig(output_dir=str(tmp_path))
    assert isinstance(config, TrainingArguments)
    assert config.num_generations == 1
    assert config.entropy_temperature == 1.0
    assert config.beta == 0.0
    assert config.loss_normalization == "token_mean"  # paper 2's code
    assert config.remove_unused_columns is False  # the trainer reads the raw `prompt` column


def test_one_shot_preset_has_paper_2_hyperparameters(tmp_path):
    config = EntropyMinConfig.one_shot(output_dir=str(tmp_path))
    assert config.num_generations == 64
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == 64
    assert config.temperature == 0.5
    assert config.entropy_temperature == 0.5  # the same T inside the entropy
    assert config.top_p == 0.95
    assert config.learning_rate == 2e-5
    assert SchedulerType(config.lr_scheduler_type) == SchedulerType.CONSTANT
    assert config.warmup_steps == 0
    assert config.max_grad_norm == 1.0
    assert config.max_steps == 10
    assert config.max_completion_length == 2048
    assert config.loss_normalization == "token_mean"
    assert config.beta == 0.0
    assert config.save_only_model is True  # no 8-bytes-per-parameter optimizer state in checkpoints
    assert EntropyMinConfig.one_shot(output_dir=str(tmp_path), save_only_model=False).save_only_model is False


def test_one_shot_overrides_win_and_keep_the_rest(tmp_path):
    config = EntropyMinConfig.one_shot(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=8,
        learning_rate=1e-5,
        max_steps=3,
        entropy_temperature=0.7,
    )
    assert config.per_device_train_batch_size == 8
    assert config.gradient_accumulation_steps == 8
    assert config.learning_rate == 1e-5
    assert config.max_steps == 3
    assert config.entropy_temperature == 0.7
    # the fields that were not overridden keep the preset's values
    assert config.num_generations == 64
    assert config.temperature == 0.5
    assert config.top_p == 0.95


def test_em_ft_preset_has_paper_1_hyperparameters(tmp_path):
    config = EntropyMinConfig.em_ft(output_dir=str(tmp_path))
    assert config.num_generations == 1
    assert config.learning_rate == 1e-6
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == 512
    assert config.loss_normalization == "sequence_sum"
    assert config.max_prompt_length + config.max_completion_length == 4096
    assert config.temperature == 1.0
    assert config.entropy_temperature == 1.0
    assert config.beta == 0.0


def test_em_ft_overrides_win(tmp_path):
    config = EntropyMinConfig.em_ft(
        output_dir=str(tmp_path), num_generations=4, loss_normalization="token_mean"
    )
    assert config.num_generations == 4
    assert config.loss_normalization == "token_mean"
    assert config.learning_rate == 1e-6


def test_presets_validate_overrides(tmp_path):
    with pytest.raises(ValueError, match="top_p"):
        EntropyMinConfig.one_shot(output_dir=str(tmp_path), top_p=2.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_generations", 0),
        ("num_generations", -2),
        ("num_generations", 1.5),
        ("num_generations", True),
        ("max_completion_length", 0),
        ("max_prompt_length", 0),
        ("lm_head_chunk_size", 0),
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("entropy_temperature", 0),
        ("entropy_temperature", -0.5),
        ("entropy_temperature", math.nan),
        ("entropy_temperature", math.inf),
        ("repetition_penalty", 0.0),
        ("top_p", 1.5),
        ("top_p", 0.0),
        ("top_k", -1),
        ("top_k", 2.5),
        ("beta", -1.0),
        ("beta", math.inf),
        ("beta", math.nan),
        ("loss_normalization", "mean"),
        ("loss_normalization", "sum"),
    ],
)
def test_bad_em_field_raises_value_error_naming_it(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        EntropyMinConfig(output_dir=str(tmp_path), **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_prompt_length", None),  # disables truncation
        ("top_p", 1.0),
        ("top_k", 0),
        ("beta", 0),
        ("beta", 0.04),
        ("entropy_temperature", 0.5),
        ("loss_normalization", "sequence_sum"),
        ("lm_head_chunk_size", 7),
    ],
)
def test_edge_values_are_accepted(tmp_path, field, value):
    config = EntropyMinConfig(output_dir=str(tmp_path), **{field: value})
    assert getattr(config, field) == value
