"""Regenerate the committed protobuf/gRPC stubs from the .proto files in this folder.

Run `make proto` (or `python -m protocol.generate`). tests/protocol/test_stubs.py fails when the
committed stubs differ from what this produces, so a .proto edit cannot land without its stubs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTOCOL_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOCOL_DIR.parent
PROTOS = ["pipeline_service.proto", "general_model_config.proto", "general_model_service.proto", "brpc_meta.proto",
          "grpc_predict_v2.proto"]
WITH_GRPC = {"pipeline_service.proto", "general_model_service.proto", "grpc_predict_v2.proto"}


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every .proto into out_root/protocol/ and return the files written."""
    from grpc_tools import protoc  # test/dev extra only

    out_dir = out_root / "protocol"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    include = str(Path(protoc.__file__).parent / "_proto")
    for name in PROTOS:
        args = ["protoc", f"-I{REPO_ROOT}", f"-I{include}", f"--python_out={out_root}"]
        if name in WITH_GRPC:
            args.append(f"--grpc_python_out={out_root}")
        args.append(str(REPO_ROOT / "protocol" / name))
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {name}")
        stem = name.removesuffix(".proto")
        written.append(out_dir / f"{stem}_pb2.py")
        if name in WITH_GRPC:
            written.append(out_dir / f"{stem}_pb2_grpc.py")
    return written


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            target = PROTOCOL_DIR / path.name
            target.write_bytes(path.read_bytes())
            sys.stderr.write(f"wrote {target.relative_to(REPO_ROOT)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
