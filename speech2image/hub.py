"""Model loading rules shared by both Executors: local paths always work, hub ids only online."""

import os


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which and what to do."""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set: then only local paths and the local cache are tried,
    so a missing model fails at once instead of after minutes of network retries."""
    return os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes')
