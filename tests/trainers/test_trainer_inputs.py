"""Bad trainer inputs fail early with a message naming the argument and the fix: generation_kwargs that
are not GenerationConfig fields, an empty dataset or one without a ``prompt`` column (EMRLOOTrainer), a
pad token id outside the model's vocabulary (both trainers)."""

from __future__ import annotations

import pytest
from datasets import Dataset

from em_hf.trainers import EMRLOOTrainer, EntropyMinConfig
from em_hf.trainers.emrloo_config import EMRLOOConfig
from tests.helpers import WORD_VOCAB_SIZE, make_tiny_llama, make_word_tokenizer
from tests.trainers.emrloo_helpers import make_args
from tests.trainers.test_em_trainer import make_trainer


@pytest.mark.parametrize("config", [EntropyMinConfig, EMRLOOConfig])
def test_generation_kwargs_must_be_generation_config_fields(tmp_path, config):
    extra = {"num_generations": 2, "bf16": False, "use_cpu": True} if config is EMRLOOConfig else {}
    with pytest.raises(ValueError, match=r"generation_kwargs.*\['bogus_key'\]"):
        config(output_dir=str(tmp_path), generation_kwargs={"bogus_key": 1}, report_to=[], **extra)
    with pytest.raises(ValueError, match=r"did you mean 'min_p' -> 'min_p'|'min_pp' -> 'min_p'"):
        config(output_dir=str(tmp_path), generation_kwargs={"min_pp": 0.1}, report_to=[], **extra)
    args = config(output_dir=str(tmp_path), generation_kwargs={"min_p": 0.05}, report_to=[], **extra)
    assert args.generation_kwargs == {"min_p": 0.05}


def test_em_trainer_uses_the_checked_generation_kwargs(tmp_path):
    trainer = make_trainer(tmp_path, generation_kwargs={"min_p": 0.05, "top_k": 3})
    assert trainer.generation_config.min_p == 0.05 and trainer.generation_config.top_k == 3
    trainer.args.generation_kwargs = {"bogus_key": 1}  # changed after the config was checked
    with pytest.raises(ValueError, match="bogus_key"):
        trainer._build_generation_config(trainer.args, trainer.processing_class)


def _rloo(tmp_path, dataset, tokenizer=None, **overrides):
    return EMRLOOTrainer(
        make_tiny_llama(sharpen=4.0),
        args=make_args(tmp_path, **{"beta": 0.0, **overrides}),
        train_dataset=dataset,
        processing_class=make_word_tokenizer() if tokenizer is None else tokenizer,
    )


def test_emrloo_rejects_an_empty_dataset(tmp_path):
    with pytest.raises(ValueError, match="`train_dataset` is empty"):
        _rloo(tmp_path, Dataset.from_dict({"prompt": []}))


def test_emrloo_rejects_a_dataset_without_prompt(tmp_path):
    with pytest.raises(
        ValueError, match=r"`train_dataset` has no 'prompt' column.*\['question'\].*rename_column"
    ):
        _rloo(tmp_path, Dataset.from_dict({"question": ["Compute 2 + 3"]}))
    prompts = Dataset.from_dict({"prompt": ["Compute 2 + 3"]})
    with pytest.raises(ValueError, match=r"`eval_dataset\['val'\]` has no 'prompt' column"):
        EMRLOOTrainer(
            make_tiny_llama(sharpen=4.0),
            args=make_args(tmp_path, beta=0.0),
            train_dataset=prompts,
            eval_dataset={"val": Dataset.from_dict({"text": ["x"]})},
            processing_class=make_word_tokenizer(),
        )


def _tokenizer_with_pad_outside_the_vocabulary():
    tokenizer = make_word_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<pad>"})  # id 128: the model has 128 rows (0..127)
    assert tokenizer.pad_token_id == WORD_VOCAB_SIZE
    return tokenizer


def test_pad_token_outside_the_vocabulary_is_rejected(tmp_path):
    message = (
        r"pad token id 128 is outside the model's vocabulary \(128 embedding rows\).*resize_token_embeddings"
    )
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, tokenizer=_tokenizer_with_pad_outside_the_vocabulary())
    with pytest.raises(ValueError, match=message):
        _rloo(
            tmp_path,
            Dataset.from_dict({"prompt": ["Compute 2 + 3"]}),
            _tokenizer_with_pad_outside_the_vocabulary(),
        )
