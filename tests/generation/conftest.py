import pytest

from tests.helpers import use_backend


@pytest.fixture(params=["cpp", "torch"], autouse=True)
def entropy_backend(request, monkeypatch) -> str:
    """Every test here runs on the compiled kernels and on the PyTorch implementation."""
    use_backend(monkeypatch, request.param)
    return request.param
