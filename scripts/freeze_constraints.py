"""Print constraints.txt from the packages installed in this interpreter's environment (run: make constraints).

`pip freeze` as it is would not install elsewhere: torch carries this machine's local label (`+cpu`, a build that
only the PyTorch index serves), and onnxruntime-gpu exists only for Linux x86_64. Both are rewritten here.
"""

from __future__ import annotations

import re
import subprocess
import sys

HEADER = """\
# What `make` installs (pip -c constraints.txt), so that a fresh machine next month gets what this one has today.
# Generated from .venv by `make constraints` (scripts/freeze_constraints.py); do not edit by hand.
# To move to newer releases: `make refresh-constraints` (a fresh .venv without constraints, then this freeze).
"""
ORT_GPU_MARKER = "platform_system == 'Linux' and platform_machine == 'x86_64'"
ORT_CPU_MARKER = "platform_system != 'Linux' or platform_machine != 'x86_64'"


def constraint_lines(frozen: list[str]) -> list[str]:
    out: list[str] = []
    for line in frozen:
        name, sep, version = line.partition("==")
        if not sep:
            continue  # direct references (git, paths) cannot be constraints
        key = re.sub(r"[-_.]+", "-", name).lower()
        version = version.split("+")[0] if key == "torch" else version  # the +cpu wheel is the Makefile's choice
        if key == "onnxruntime-gpu":
            # pyproject takes the GPU build on Linux x86_64 and the CPU build elsewhere: pin both at one version
            out.append(f"{name}=={version} ; {ORT_GPU_MARKER}")
            out.append(f"onnxruntime=={version} ; {ORT_CPU_MARKER}")
        else:
            out.append(f"{name}=={version}")
    return out


def main() -> int:
    pip = [sys.executable, "-m", "pip", "freeze", "--exclude-editable"]
    frozen = subprocess.run(pip, capture_output=True, text=True, check=True).stdout.splitlines()
    pip_version = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    lines = sorted([f"pip=={pip_version}", *constraint_lines(frozen)], key=str.lower)
    sys.stdout.write(HEADER + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
