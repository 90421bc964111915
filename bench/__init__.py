"""Benchmarks, run from the repository root as modules (``python -m bench.<name>``).

The package sets the offline environment (devtools.OFFLINE_ENVIRONMENT, where not set already):
a package runs before its modules, so before any of them imports jina or huggingface_hub."""

import os

from devtools import OFFLINE_ENVIRONMENT

for _name, _value in OFFLINE_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
