"""Which device a model runs on: the Executors' ``device`` argument, 'auto' resolved.

Each library asks its own runtime whether CUDA is usable (CTranslate2 and torch are built and
load their CUDA libraries separately), so the caller passes how to ask."""

from typing import Callable

AUTO_DEVICE = 'auto'


def resolve_device(device: str, cuda_usable: Callable[[], bool]) -> str:
    """``device`` as given ('cpu', 'cuda', ...), or for 'auto', 'cuda' when ``cuda_usable()``
    says so and 'cpu' otherwise."""
    if device != AUTO_DEVICE:
        return device
    return 'cuda' if cuda_usable() else 'cpu'


def torch_cuda_usable() -> bool:
    """Whether torch sees a CUDA device (imports torch)."""
    import torch

    return torch.cuda.is_available()


def ctranslate2_cuda_usable() -> bool:
    """Whether CTranslate2 sees a CUDA device (imports ctranslate2)."""
    import ctranslate2

    return ctranslate2.get_cuda_device_count() > 0
