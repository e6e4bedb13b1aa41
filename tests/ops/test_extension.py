"""The kernel build: the cache name keyed by the instruction set and the sources, and the one log line of a
build."""

import logging
import shutil
from pathlib import Path

import pytest
from torch.utils import cpp_extension

import em_hf.ops._extension as extension
from em_hf.ops import build

X86 = "processor\t: {i}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n\n"
AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma"


def cpuinfo(flags: str, cores: int = 2) -> str:
    return "".join(X86.format(i=i, flags=flags) for i in range(cores))


def test_isa_key_is_stable_for_the_same_instruction_set():
    key = extension.isa_key(cpuinfo(AVX2), "x86_64")
    assert key == extension.isa_key(cpuinfo(AVX2, cores=16), "x86_64")  # core count does not matter
    assert key == extension.isa_key(cpuinfo(" ".join(reversed(AVX2.split()))), "x86_64")  # nor the order
    assert key == extension.isa_key(cpuinfo(AVX2).replace("spectre_v1", "mds"), "x86_64")  # nor the bugs
    assert extension.isa_key() == extension.isa_key()  # this host
    assert len(key) == 10 and int(key, 16) >= 0


def test_isa_key_differs_when_the_flags_or_the_architecture_differ():
    key = extension.isa_key(cpuinfo(AVX2), "x86_64")
    assert key != extension.isa_key(cpuinfo(AVX2 + " avx512f avx512bw"), "x86_64")
    assert key != extension.isa_key(cpuinfo(AVX2.replace(" avx2", "")), "x86_64")
    assert key != extension.isa_key(cpuinfo(AVX2), "i686")
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32{}\n"
    assert extension.isa_key(arm.format(""), "aarch64") != extension.isa_key(arm.format(" sve"), "aarch64")


def test_isa_key_falls_back_to_the_processor_name(monkeypatch):
    monkeypatch.setattr(extension.platform, "processor", lambda: "x86_64 Family 6 Model 85")
    key = extension.isa_key("", "x86_64")
    monkeypatch.setattr(extension.platform, "processor", lambda: "x86_64 Family 25 Model 1")
    assert extension.isa_key("", "x86_64") != key
    monkeypatch.setattr(extension, "_CPUINFO", extension.Path("/nonexistent/cpuinfo"))
    assert extension.isa_key(machine="x86_64") == extension.isa_key("", "x86_64")


def test_extension_name_carries_the_instruction_set_and_source_keys():
    key = f"{extension.isa_key()}_{extension.source_key()}"
    assert extension.extension_name() == f"em_hf_entropy_cpu_{key}"
    assert extension.extension_name(with_cuda=True) == f"em_hf_entropy_cuda_{key}"


def test_source_key_changes_with_any_source_and_only_with_the_sources(tmp_path):
    """Two checkouts with different kernel sources (other op schemas) must not load each other's
    library from the shared cache; two with the same sources share it."""
    for name in ("schemas.cpp", "entropy_cpu.cpp"):
        (tmp_path / name).write_text(f"// {name}\n")
    key = extension.source_key(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    assert extension.source_key(tmp_path) == key  # a sub-folder is not a source
    for name in ("schemas.cpp", "entropy_cpu.cpp"):
        (copy / name).write_text(f"// {name}\n")
    assert extension.source_key(copy) == key  # another checkout, same sources
    (copy / "schemas.cpp").write_text("// schemas.cpp, with a new op\n")
    assert extension.source_key(copy) != key
    assert extension.source_key() == extension.source_key(extension._CSRC)


@pytest.fixture
def em_hf_records():
    """The records of the em_hf loggers (the em_hf root does not propagate to the root logger)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    root = logging.getLogger("em_hf")
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield records
    root.removeHandler(handler)
    root.setLevel(level)


def test_build_logs_one_line_before_compiling_and_none_when_cached(monkeypatch, tmp_path, em_hf_records):
    monkeypatch.setenv("EM_HF_CACHE", str(tmp_path))
    monkeypatch.setattr(extension, "_with_cuda", lambda: False)
    monkeypatch.setattr("em_hf.ops._registration.register_python_parts", lambda: None)
    compiled, loaded, names = [], [], []

    def fake_load(name, sources, build_directory, **kwargs):
        compiled.append((name, build_directory))
        assert all(Path(source).is_file() for source in sources)  # the copies in the cache folder
        (Path(build_directory) / f"{name}.so").write_bytes(b"")  # what a real build leaves behind

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(extension.torch.ops, "load_library", loaded.append)
    for attempt in range(3):
        monkeypatch.setattr(
            extension, "_state", {"loaded": False, "error": None, "warned": False, "cuda": False}
        )
        if attempt == 2:  # the sources changed (another version of em_hf): a new build, announced
            monkeypatch.setattr(extension, "source_key", lambda folder=None: "0123456789")
        build()
        build()  # loaded: nothing more
        names.append(extension.extension_name())
    assert [c[0] for c in compiled] == [names[0], names[2]]
    assert compiled[0][1] != compiled[1][1]
    assert Path(compiled[0][1]).parent.parent == tmp_path / "kernels"
    assert loaded == [str(Path(compiled[0][1]) / f"{names[1]}.so")]  # the second run loads the cached one
    messages = [record.getMessage() for record in em_hf_records]
    assert len(messages) == 2, messages  # the first build and the one after the change
    assert all("building the em_hf C++ kernels: about a minute, once per machine" in m for m in messages)
    assert {record.name for record in em_hf_records} == {"em_hf.ops._extension"}


def test_the_build_folder_does_not_depend_on_the_checkout(monkeypatch, tmp_path):
    """Two checkouts of the same sources (another clone, a worktree) share one build."""
    monkeypatch.setenv("EM_HF_CACHE", str(tmp_path / "cache"))
    here = extension.build_directory()
    clone = tmp_path / "clone" / "csrc"
    shutil.copytree(extension._CSRC, clone)
    monkeypatch.setattr(extension, "_CSRC", clone)
    assert extension.build_directory() == here
    assert here.parent.parent == tmp_path / "cache" / "kernels"
    (clone / "entropy_cpu.cpp").write_text((clone / "entropy_cpu.cpp").read_text() + "\n// edited\n")
    assert extension.build_directory() != here  # edited sources: another build
    copies = extension._copy_sources(extension.build_directory(), with_cuda=False)
    assert [c.name for c in copies] == list(extension._CPU_SOURCES)
    assert copies[1].read_text().endswith("// edited\n")
