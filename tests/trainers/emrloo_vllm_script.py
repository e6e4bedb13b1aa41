"""EMRLOOTrainer on trl's own ``use_vllm=True`` colocate path, on the default model (run by
test_em_trainer_vllm.py in its own process, so that its engine does not share a process with the other one).
Prints one JSON line: the logs, and greedy continuations of vLLM (after a weight sync) and of ``generate``."""

import json
import os
import sys
import tempfile

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

if __name__ == "__main__":
    import torch
    from datasets import Dataset

    from em_hf import EMRLOOConfig, EMRLOOTrainer
    from em_hf.generation.prompts import render_prompts
    from em_hf.models import ensure_default_model_cache, load_model

    path = str(ensure_default_model_cache())
    prompts = [
        [{"role": "user", "content": f"Compute {a} + {b}. Reply with just the number."}]
        for a, b in ((2, 9), (7, 5))
    ]
    args = EMRLOOConfig(
        output_dir=tempfile.mkdtemp(),
        em_reward="token",
        beta=0.0,
        max_steps=2,
        learning_rate=float(sys.argv[1]),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=12,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=512,
        vllm_engine_kwargs={"dtype": "float32", "enforce_eager": True},
        model_init_kwargs={"dtype": torch.float32},
        bf16=False,  # trl's default is bf16 autocast, which would also run the reference `generate` below
    )
    _, tokenizer = load_model(path)
    trainer = EMRLOOTrainer(
        model=path,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )
    trainer.train()
    rows = render_prompts(tokenizer, prompts)
    engine = trainer.vllm_generation
    engine.sync_weights()
    engine.temperature = 0.0  # greedy
    _, vllm_ids, _, _ = engine.generate(prompts=rows, images=None, num_generations=1)
    model = trainer.model.eval()
    hf_ids = []
    with torch.no_grad():
        for row in rows:
            out = model.generate(torch.tensor([row]), max_new_tokens=12, do_sample=False)[
                0, len(row) :
            ].tolist()
            hf_ids.append(out)
    eos = tokenizer.eos_token_id
    cut = [ids[: ids.index(eos) + 1] if eos in ids else ids for ids in hf_ids]
    print("RESULT " + json.dumps({"log_history": trainer.state.log_history, "vllm": vllm_ids, "hf": cut}))
