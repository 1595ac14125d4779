"""arcast_core stays importable without torch, so that serving can use it."""

from __future__ import annotations

import subprocess
import sys

LIGHT_MODULES = ["arcast_core.data_dir", "arcast_core.files", "arcast_core.runtime", "arcast_core.trie"]


def test_core_modules_load_without_torch() -> None:
    code = f"import sys; import {', '.join(LIGHT_MODULES)}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
