"""Server-mode rollouts against a real vLLM server on this machine (CPU; ``slow``; skipped without vLLM).

A ``vllm serve`` process (``python -m vllm.entrypoints.openai.api_server``, as the README starts it) with
``VLLM_SERVER_DEV_MODE=1`` and em_hf's ``FolderWeightSync`` worker extension serves the default model.
An EntropyMinTrainer with ``vllm_mode="server"`` gets its rollouts from it: the server's greedy
continuations equal ``generate``'s with the trainer's weights before a step and after it (the step
changed them, so the server got the new weights through the folder sync). A server without the
extension (here a stand-in answering as ``vllm serve`` without development mode) is refused with a
message that says how to start it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.trainers.vllm_checks import PROMPTS, greedy_rollouts, hf_greedy, rollout_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: make installs it"
    ),
]

STARTUP_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(model_path: Path, log: Path, extension: bool) -> tuple[subprocess.Popen, str]:
    from em_hf.generation.vllm.weight_sync import WORKER_EXTENSION

    port = _free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    if extension:
        command += ["--worker-extension-cls", WORKER_EXTENSION]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return server, url
        except requests.RequestException:
            pass
        time.sleep(2)
    server.kill()
    raise RuntimeError(f"the vLLM server did not start in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _config(tmp_path: Path, url: str):
    return rollout_config(
        str(tmp_path / "out"),
        vllm_mode="server",
        vllm_server_base_url=url,
        vllm_server_timeout=60.0,
        vllm_weight_sync_dir=str(tmp_path / "weights"),
    )


def test_server_rollouts_follow_the_current_weights(tmp_path):
    from em_hf.models import ensure_default_model_cache, load_model
    from em_hf.trainers import EntropyMinTrainer

    path = ensure_default_model_cache()
    server, url = _start_server(path, tmp_path / "server.log", extension=True)
    try:
        model, tokenizer = load_model(path)
        args = _config(tmp_path, url)
        trainer = EntropyMinTrainer(model=model, args=args, train_dataset=PROMPTS, processing_class=tokenizer)
        _, before = greedy_rollouts(trainer)
        assert before == hf_greedy(model, tokenizer)

        trainer.train()  # one optimizer step on the server's rollouts (sampled at T=1)
        assert trainer.state.global_step == 1
        assert trainer.state.log_history[0]["completions/mean_length"] > 0

        _, after = greedy_rollouts(trainer)  # the server reloads the step's weights first
        assert trainer._last_loaded_step == 1
        assert (tmp_path / "weights" / "model.safetensors").is_file()
        assert after == hf_greedy(model, tokenizer)
        assert after != before, "the step did not change the greedy continuations; raise the learning rate"
    finally:
        _stop(server)


class _ServerWithoutExtension(BaseHTTPRequestHandler):
    """Answers as ``vllm serve`` without development mode does: healthy, one model, no /collective_rpc."""

    def do_GET(self):
        body = b'{"data": [{"id": "default"}]}' if self.path == "/v1/models" else b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b'{"detail": "Not Found"}')

    def log_message(self, *args):
        pass


def test_a_server_without_the_extension_is_refused_with_the_fix(tmp_path, tiny_llama, word_tokenizer):
    from em_hf.trainers import EntropyMinTrainer

    server = ThreadingHTTPServer(("127.0.0.1", 0), _ServerWithoutExtension)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(
            RuntimeError, match=r"VLLM_SERVER_DEV_MODE=1.*--worker-extension-cls em_hf\.generation"
        ):
            EntropyMinTrainer(
                model=tiny_llama,
                args=_config(tmp_path, url),
                train_dataset=["w1 w2"],
                processing_class=word_tokenizer,
            )
    finally:
        server.shutdown()
