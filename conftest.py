"""pytest, for the whole repository: without vLLM, the doctests of em_hf.generation.vllm are not
collected (importing that package raises ImportError; its tests skip on their own)."""

import importlib.util

try:
    _HAS_VLLM = importlib.util.find_spec("vllm") is not None
except ValueError:  # sys.modules["vllm"] is None
    _HAS_VLLM = False

collect_ignore = [] if _HAS_VLLM else ["em_hf/generation/vllm"]
