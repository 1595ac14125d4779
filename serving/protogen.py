"""Generate the Python gRPC stubs from protos/ into serving/proto/ (run: python -m serving.protogen).

protoc writes imports relative to the proto root (``from arcast.v1 import ...``); they are rewritten to the
package path so the stubs import as ``serving.proto.arcast.v1``. The stubs are committed; a test fails when
they are stale.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "serving" / "proto"
_IMPORT = re.compile(r"^from arcast\.v1 import", re.MULTILINE)


def generate(out_root: Path) -> list[Path]:
    """Write the stubs under ``out_root`` and return their paths."""
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *map(str, protos),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {protos}")
        written = []
        for path in sorted(Path(tmp).rglob("*.py*")):
            target = out_root / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_IMPORT.sub("from serving.proto.arcast.v1 import", path.read_text()))
            written.append(target)
    for package in {p.parent for p in written} | {out_root, out_root / "arcast"}:
        (package / "__init__.py").touch()
    return written


def main() -> int:
    if OUT_ROOT.exists():
        shutil.rmtree(OUT_ROOT)
    for path in generate(OUT_ROOT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
