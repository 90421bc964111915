"""The runtime code stands alone: what the images ship never imports dev tooling or tests."""

import ast
from pathlib import Path

from devtools.offline_flow import ROOT

RUNTIME = [ROOT / 'flow.py', *sorted((ROOT / 'speech2image').rglob('*.py'))]
RUNTIME += sorted((ROOT / 'executors').rglob('*.py'))
DEV_PACKAGES = {'devtools', 'tests', 'bench', 'scripts'}


def imported_packages(path: Path) -> set:
    """The top-level names ``path`` imports (absolute imports only: the project uses no other)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.partition('.')[0])
    return names


def test_runtime_code_never_imports_dev_tooling():
    assert len(RUNTIME) > 20, 'the runtime modules were not found'
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & DEV_PACKAGES)
        for path in RUNTIME
        if imported_packages(path) & DEV_PACKAGES
    }
    assert not offenders, offenders


def test_the_images_leave_dev_tooling_out():
    # .dockerignore ignores everything, then lets back in what the Dockerfiles copy.
    allowed = [
        line[1:].rstrip('/')
        for line in (ROOT / '.dockerignore').read_text().splitlines()
        if line.startswith('!')
    ]
    assert allowed and not any(entry.partition('/')[0] in DEV_PACKAGES for entry in allowed)
