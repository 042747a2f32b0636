"""Regenerate the committed protobuf/gRPC stubs from the .proto files in this folder.

Run `make proto` (or `python -m resnest_serving.protocol.generate`). tests/protocol/test_stubs.py fails when the
committed stubs differ from what this produces, so a .proto edit cannot land without its stubs.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTOCOL_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOCOL_DIR.parent
PACKAGE_PATH = Path("resnest_serving") / "protocol"  # where the stubs live once installed
PROTOS = ["pipeline_service.proto", "general_model_config.proto", "general_model_service.proto", "brpc_meta.proto",
          "grpc_predict_v2.proto"]
WITH_GRPC = {"pipeline_service.proto", "general_model_service.proto", "grpc_predict_v2.proto"}


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every .proto into out_root/resnest_serving/protocol/ and return the files written.

    The .proto files are copied under `resnest_serving/protocol/` first, so that the generated gRPC stubs
    import `resnest_serving.protocol.*_pb2` (the installed name), not a top-level `protocol`."""
    out_dir = out_root / PACKAGE_PATH
    out_dir.mkdir(parents=True, exist_ok=True)
    source_root = out_root / "proto_src"
    (source_root / PACKAGE_PATH).mkdir(parents=True)
    written: list[Path] = []
    # protoc runs in a child process: grpc_tools' protobuf library and Paddle's abort when both are loaded
    # into one process (a test process imports Paddle too).
    tools = importlib.util.find_spec("grpc_tools")  # test/dev extra only
    if tools is None or not tools.submodule_search_locations:
        raise RuntimeError("grpcio-tools is not installed (pip install -e '.[test]')")
    include = str(Path(next(iter(tools.submodule_search_locations))) / "_proto")
    for name in PROTOS:
        shutil.copyfile(PROTOCOL_DIR / name, source_root / PACKAGE_PATH / name)
    for name in PROTOS:
        args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{source_root}", f"-I{include}", f"--python_out={out_root}"]
        if name in WITH_GRPC:
            args.append(f"--grpc_python_out={out_root}")
        args.append(str(source_root / PACKAGE_PATH / name))
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"protoc failed on {name}: {done.stderr.strip()}")
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
