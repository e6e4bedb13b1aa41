"""One prompt renderer: prompt selection (``select_by_pass_variance``), training
(``EntropyMinTrainer``) and evaluation (the harness's ``run_items``) feed the model identical input ids
for the same dataset row, in trl's standard (string) and conversational (messages) formats."""

from __future__ import annotations

import pytest

from em_hf.data.selection import select_by_pass_variance
from em_hf.eval.benchmarks import BenchmarkItem
from em_hf.eval.methods import run_items
from em_hf.generation.decoding import parse_method
from em_hf.generation.prompts import render_prompt
from em_hf.trainers import EntropyMinConfig, EntropyMinTrainer
from tests.helpers import make_tiny_llama, make_word_tokenizer

ROWS = {
    "standard": "Compute 3 + 4 .",
    "conversational": [{"role": "user", "content": "Compute 3 + 4 ."}],
}


def _spy_on_generate(model) -> list[list[int]]:
    """Record the unpadded input ids of every row that reaches ``model.generate``."""
    seen: list[list[int]] = []
    original = model.generate

    def generate(*args, input_ids=None, attention_mask=None, **kwargs):
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            seen.append([token for token, keep in zip(ids, mask, strict=True) if keep])
        return original(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.generate = generate
    return seen


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_selection_training_and_evaluation_render_the_same_ids(fmt, tmp_path):
    prompt = ROWS[fmt]
    tokenizer = make_word_tokenizer()
    expected = render_prompt(tokenizer, prompt)
    # The two formats really differ: the chat template adds its role markers.
    other = render_prompt(tokenizer, ROWS["standard" if fmt == "conversational" else "conversational"])
    assert expected != other

    model = make_tiny_llama(sharpen=4.0)
    seen = _spy_on_generate(model)
    select_by_pass_variance(model, tokenizer, [prompt], [7], k=2, max_new_tokens=2, progress=False)
    selection = list(seen)

    seen.clear()
    item = BenchmarkItem(
        benchmark="row", id="0", task="arithmetic", question="3 + 4", prompt=prompt, reference="7"
    )
    run_items(model, tokenizer, [item], parse_method("greedy"), max_new_tokens=2)
    evaluation = list(seen)

    seen.clear()
    args = EntropyMinConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=2,
        report_to=[],
        use_cpu=True,
    )
    trainer = EntropyMinTrainer(
        model=model, args=args, train_dataset=[{"prompt": prompt}], processing_class=tokenizer
    )
    batch = trainer.generate_batch([prompt, prompt])
    training = list(seen)
    trained_rows = [
        ids[mask.bool()].tolist() for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)
    ]

    assert selection == [expected, expected]  # k = 2 samples of the one prompt
    assert evaluation == [expected]
    assert training == [expected, expected]
    assert trained_rows == [expected, expected]  # the ids the loss is computed on


def test_standard_prompts_follow_trl_and_keep_special_tokens():
    """A string is tokenized as trl's RLOOTrainer does, ``processing_class(text=prompts)``: with the
    tokenizer's special tokens and WITHOUT the chat template, even when the tokenizer has one."""
    from tokenizers import processors

    tokenizer = make_word_tokenizer()
    assert tokenizer.chat_template
    bos = tokenizer.convert_tokens_to_ids("<unk>")  # any known token stands in for a BOS here
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<unk> $A", special_tokens=[("<unk>", bos)]
    )
    ids = render_prompt(tokenizer, "Compute 3 + 4 .")
    assert ids == tokenizer(text=["Compute 3 + 4 ."])["input_ids"][0]
    assert ids[0] == bos and ids[1:] == tokenizer("Compute 3 + 4 .", add_special_tokens=False)["input_ids"]


def test_malformed_prompts_are_rejected_with_the_format_rule():
    tokenizer = make_word_tokenizer()
    for bad in ({"role": "user"}, [], [{"text": "hi"}], 3):
        with pytest.raises(TypeError, match=r"standard format.*conversational format"):
            render_prompt(tokenizer, bad)
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(make_word_tokenizer(chat_template=False), ROWS["conversational"])
    with pytest.raises(ValueError, match="zero tokens"):
        render_prompt(tokenizer, "")
