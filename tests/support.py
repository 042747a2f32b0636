"""Test helpers importable from any test module (tests/ is on sys.path via pytest's `pythonpath`)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnest_serving.pipeline.pipeline import StageObserver
from resnest_serving.serving import launcher
from resnest_serving.serving.launcher import ServerProcess  # noqa: F401  (re-exported for tests)

REPO_ROOT = launcher.REPO_ROOT
TRITON_SCRIPT = REPO_ROOT / "tests" / "triton_client.py"


def teardown_problems(server: ServerProcess) -> list[str]:
    """Stop `server` if it still runs (SIGTERM, as a user would) and say what went wrong: that stop's exit
    code other than 0, or a Python traceback anywhere in its log. A server the test already stopped keeps the
    exit code the test checked (or meant: SIGKILL)."""
    problems = []
    running = server.proc.poll() is None
    code = server.stop()
    if running and code != 0:
        problems.append(f"exited with {code} after SIGTERM")
    seen, deadline = -1, time.monotonic() + 2.0
    while len(server.lines) != seen and time.monotonic() < deadline:  # the reader thread drains stderr
        seen = len(server.lines)
        time.sleep(0.1)
    if "Traceback (most recent call last)" in server.log:
        problems.append("has a Python traceback in its log")
    args = " ".join(str(a) for a in server.proc.args[3:])
    return [f"server ({args}) {problem}:\n{server.log[-4000:]}" for problem in problems]


@contextlib.contextmanager
def serving(config: Path) -> Iterator[ServerProcess]:
    """A running `resnest serve` of `config` for a fixture to yield; at the fixture's teardown it must stop
    (SIGTERM) with exit 0 and no Python traceback in its log (see teardown_problems)."""
    server = ServerProcess(config)
    yield server
    problems = teardown_problems(server)
    if problems:
        pytest.fail("\n\n".join(problems))


def write_config(path: Path, model_dir: Path, op: dict | None = None, top: dict | None = None,
                 lsc: dict | None = None) -> Path:
    """launcher.write_config with one math thread per engine instance (tests share 2 cores)."""
    return launcher.write_config(path, model_dir, op, top, lsc={"thread_num": 1, **(lsc or {})})


def write_token_file(path: Path, *tokens: str) -> Path:
    """A token file holding `tokens`, one per line, readable by its owner only (as the server wants it)."""
    path.write_text("".join(f"{token}\n" for token in tokens))
    path.chmod(0o600)
    return path


def load_unload_config(folder: Path, model_dir: Path, token: str) -> Path:
    """A config in `folder` serving `model_dir` with the V2 load/unload calls open (`model_control:
    explicit`) and guarded by `token` (`auth:` on)."""
    tokens = write_token_file(folder / "tokens.txt", token)
    return write_config(folder / "config.yml", model_dir,
                        top={"model_control": "explicit", "auth": {"token_file": str(tokens)}})


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by
    the CA, written as PEM files: {"ca", "server_cert", "server_key", "client_cert", "client_key"}."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool, usage=None, san=None) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                critical=True)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("resnest test CA", ca_key, "resnest test CA", ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = certificate("localhost", server_key, "resnest test CA", ca_key, False, ExtendedKeyUsageOID.SERVER_AUTH,
                         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = certificate("test client", client_key, "resnest test CA", ca_key, False, ExtendedKeyUsageOID.CLIENT_AUTH)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    files = {"ca": ca.public_bytes(serialization.Encoding.PEM),
             "server_cert": server.public_bytes(serialization.Encoding.PEM), "server_key": key_pem(server_key),
             "client_cert": client.public_bytes(serialization.Encoding.PEM), "client_key": key_pem(client_key)}
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label, data in files.items():
        paths[label] = folder / f"{label}.pem"
        paths[label].write_bytes(data)
    return paths


def run_predictor(model_dir: Path, x):
    """The exported model in `model_dir` run once on `x` by Paddle Inference (the exporter tests' reference)."""
    from resnest_serving.pipeline.engines.paddle_config import open_predictor
    from resnest_serving.protocol.bundle import find_model_files

    predictor = open_predictor(*find_model_files(model_dir))
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(x)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def installed_folders() -> tuple[str, ...]:
    """The repository folders that setup.py installs as `resnest_serving.<folder>` and that exist (its FOLDERS,
    read without running setup.py)."""
    import ast

    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FOLDERS" for t in node.targets):
            return tuple(f for f in ast.literal_eval(node.value) if (REPO_ROOT / f).is_dir())
    raise AssertionError("setup.py has no FOLDERS")


class BatchRecorder(StageObserver):
    """Each engine batch as the batcher reports it: (images, requests)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def batch_done(self, images: int, requests: int, queue_wait_s: float, infer_s: float) -> None:
        self.batches.append((images, requests))


def pipeline_settings(**changes):
    """PipelineSettings of a small test pipeline (batch 4, no waiting, 2 preprocessing threads), with `changes`."""
    import dataclasses

    from resnest_serving.pipeline.pipeline import PipelineSettings

    base = PipelineSettings(service_name="imagenet", topk=3, batch_size=4, auto_batching_timeout_ms=-1,
                            timeout_ms=-1, max_images_per_request=8, max_image_pixels=40_000_000,
                            max_aspect_ratio=20.0, jpeg_dct_scaling=False, max_queue_images=64,
                            preprocess_threads=2, retry=1, log_profile=False, response_cache_mb=0)
    return dataclasses.replace(base, **changes)


def run_pipeline(model_dir: Path, settings, scenario, observer=None) -> None:
    """Start a Pipeline over one real ONNX Runtime worker process, run `await scenario(pipeline, observer)`,
    stop it."""
    import asyncio

    from resnest_serving.pipeline.engines import start_engines
    from resnest_serving.pipeline.pipeline import Pipeline
    from resnest_serving.protocol.bundle import ModelBundle
    from resnest_serving.protocol.engine_options import EngineOptions

    async def main():
        bundle = ModelBundle.load(model_dir)
        engines = await start_engines(bundle, "onnxruntime", EngineOptions(), 1, 4)
        pipeline = Pipeline(bundle, engines, settings, observer)
        await pipeline.start()
        try:
            await scenario(pipeline, observer)
        finally:
            await pipeline.stop()
            await asyncio.gather(*(engine.close() for engine in engines))

    asyncio.run(main())


def triton_python() -> str:
    """The tritonclient environment's interpreter; fails (never skips) when it is not there."""
    import pytest

    path = os.environ.get("RESNEST_TRITON_PYTHON", "")
    if not path or not Path(REPO_ROOT, path).is_file():
        pytest.fail(f"RESNEST_TRITON_PYTHON={path!r} is not a Python interpreter: run `make venv-test` (it builds "
                    ".venv-triton with tritonclient) and run the tests with `make test`, or set "
                    "RESNEST_TRITON_PYTHON=.venv-triton/bin/python")
    return str(Path(REPO_ROOT, path))


def run_tritonclient(calls: list[dict], tmp: Path) -> dict:
    """Make `calls` with tritonclient in its own environment (tests/triton_client.py, which lists them);
    {call id: {"value"} | {"error"}}."""
    spec = tmp / "calls.json"
    spec.write_text(json.dumps(calls))
    done = subprocess.run([triton_python(), str(TRITON_SCRIPT), str(spec)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)
