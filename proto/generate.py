"""Regenerate (or check) the Python code generated from ``proto/stratus.proto``.

Usage::

    python -m proto.generate          # rewrite proto/stratus_pb2*.py
    python -m proto.generate --check  # exit 1 if the committed code differs from the .proto
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("stratus_pb2.py", "stratus_pb2.pyi", "stratus_pb2_grpc.py")


def generate(out_root: Path) -> None:
    """Run protoc on ``proto/stratus.proto``, writing into ``out_root/proto``."""
    from grpc_tools import protoc

    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(ROOT / "proto" / "stratus.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main(argv: list[str]) -> int:
    """Entry point: generate in place, or with ``--check`` report drift."""
    if "--check" not in argv:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        drift = [
            name
            for name in OUTPUTS
            if (Path(tmp) / "proto" / name).read_bytes() != (ROOT / "proto" / name).read_bytes()
        ]
    if drift:
        print(f"generated code is stale: {', '.join(drift)}; run: python -m proto.generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
