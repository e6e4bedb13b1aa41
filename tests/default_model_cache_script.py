"""Child process of the default-model cache tests: load the default model from ``EM_HF_CACHE`` and
print a fingerprint of its logits.

``--fake`` replaces the GGUF conversion by a tiny random model built in 1.5 s (so that two processes
started together overlap inside the build) and appends a line to ``$BUILD_LOG`` per build.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import em_hf.models as em_models
from tests.helpers import make_tiny_llama, make_word_tokenizer


def _fake_conversion():
    with open(os.environ["BUILD_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(1.5)
    return make_tiny_llama(sharpen=1.0, pad_token_id=None), make_word_tokenizer(
        pad=False, chat_template=False
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fake", action="store_true")
    parser.add_argument("--start-at", type=float, default=0.0, help="time.time() to start at (a race)")
    args = parser.parse_args()
    if args.fake:
        em_models._default_model_source = lambda: Path("fake.gguf")
        em_models._dequantized_default_model = _fake_conversion
    time.sleep(max(0.0, args.start_at - time.time()))
    model, tokenizer = em_models.load_default_model()
    ids = tokenizer("Compute 2 + 3", return_tensors="pt").input_ids
    with torch.no_grad():
        print("logits", float(model(ids).logits.double().sum()))


if __name__ == "__main__":
    main()
