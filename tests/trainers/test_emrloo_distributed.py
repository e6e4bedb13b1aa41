"""EMRLOOTrainer in 2 CPU processes launched by Accelerate: training runs, both ranks end with the same
weights, and the SC-RL reward votes over prompt groups that are split across the processes.

``accelerate launch --cpu`` starts several CPU processes only through MPI (mpirun), which this
machine does not have; ``--multi_gpu`` on a machine without GPUs launches torchrun processes that
Accelerate runs as MULTI_CPU with the gloo backend (``use_cpu=True`` in the config), offline."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

from em_hf.utils.answers import extract_answer
from tests.trainers.emrloo_helpers import save_tiny_llama

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("emrloo_distributed_script.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_in_sync_and_vote_across_processes(tmp_path):
    model_dir = save_tiny_llama(tmp_path / "model")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(SCRIPT),
        str(model_dir),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["global_step"] == 2 for r in ranks)
    # training changed the weights, identically on both ranks (DDP averages the gradients)
    assert ranks[0]["initial_checksum"] == ranks[1]["initial_checksum"]
    assert ranks[0]["final_checksum"] != ranks[0]["initial_checksum"]
    for a, b in zip(ranks[0]["final_checksum"], ranks[1]["final_checksum"], strict=True):
        assert math.isclose(a, b, rel_tol=1e-9)
    # trl gathers the rewards: both ranks log the same finite EM reward each step
    logged = [
        [h["rewards/em_token/mean"] for h in r["log_history"] if "rewards/em_token/mean" in h] for r in ranks
    ]
    assert len(logged[0]) == 2 and logged[0] == logged[1] and all(math.isfinite(x) for x in logged[0])

    # SC-RL: 2 completions per process, 4 per prompt, so each group spans both processes; the reward
    # each process returned must be the vote over all 4 (a local vote would use 2)
    assert len(ranks[0]["sc_calls"]) == len(ranks[1]["sc_calls"]) == 2
    for call0, call1 in zip(ranks[0]["sc_calls"], ranks[1]["sc_calls"], strict=True):
        prompts = call0["prompts"] + call1["prompts"]
        assert len(set(prompts)) == 1  # one group, split across the processes
        answers = [extract_answer(c) for c in call0["completions"] + call1["completions"]]
        expected = [0.0 if a is None else sum(b == a for b in answers) / 4 for a in answers]
        assert call0["rewards"] + call1["rewards"] == expected
