"""math_accuracy as ``compute_metrics`` of a real ``transformers.Trainer.evaluate`` on a tiny model:
the reported score equals the one computed by hand from an independent forward pass."""

from __future__ import annotations

import datasets
import torch
from transformers import Trainer, TrainingArguments

from em_hf.eval.grading import grade_math
from em_hf.metrics import load
from tests.helpers import make_tiny_llama

VOCAB = 50
SEQ_LEN = 6
ANSWER_TOKENS = 3  # the completion's answer: the digits of the last three predicted tokens
CORRECT = [True, False, True, True, False]  # which references are set to the model's own answer


def decode(token_ids) -> str:
    """A fixed id -> text mapping (no tokenizer): the answer is made of the last tokens as digits."""
    digits = "".join(str(int(i) % 10) for i in token_ids[-ANSWER_TOKENS:])
    return f"The answer is \\boxed{{1{digits}}}."


def test_trainer_evaluate_reports_the_metric(tmp_path):
    model = make_tiny_llama(seed=0, vocab_size=VOCAB, hidden_size=16, eos_token_id=None, pad_token_id=None)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, VOCAB, (len(CORRECT), SEQ_LEN), generator=generator)

    # Independent computation: one forward pass, argmax, the fixed decoding, grade_math by hand.
    with torch.no_grad():
        predicted = model(input_ids=input_ids).logits.argmax(-1)
    completions = [decode(row.tolist()) for row in predicted]
    assert len(set(completions)) == len(completions), "the items must differ for the test to see mix-ups"
    answers = [c.split("{")[1].split("}")[0] for c in completions]
    references = [a if ok else str(int(a) + 1) for a, ok in zip(answers, CORRECT, strict=True)]
    by_hand = sum(grade_math(c, r) for c, r in zip(completions, references, strict=True)) / len(completions)
    assert by_hand == sum(CORRECT) / len(CORRECT)

    metric = load("math_accuracy")
    seen: list[list[str]] = []

    def compute_metrics(eval_prediction):
        texts = [decode(row) for row in eval_prediction.predictions]
        seen.append(texts)
        return metric.compute(predictions=texts, references=references)

    dataset = datasets.Dataset.from_dict({"input_ids": input_ids.tolist(), "labels": input_ids.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=2,  # 3 batches, the last one short
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=dataset,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
    )
    metrics = trainer.evaluate()
    assert seen == [completions]
    assert metrics["eval_math_accuracy"] == by_hand
    assert metrics["eval_num_correct"] == sum(CORRECT)
    assert metrics["eval_num_items"] == len(CORRECT)
