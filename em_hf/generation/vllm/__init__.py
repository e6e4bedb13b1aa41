"""vLLM support: generation for the evaluation harness (:mod:`em_hf.generation.vllm.engine`).

Nothing here imports vLLM at import time; the modules raise an ``ImportError`` that says how to install
it when it is used without being installed.
"""
