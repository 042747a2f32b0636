"""Issue #24 on the binary doors, against real `resnest serve` processes: a caller the server will refuse costs
no message buffering (bRPC reads the meta and checks the token before the payload; gRPC refuses before grpcio
receives the message), calls per connection are capped, tokens rotate without a restart, secret files readable
by others are warned about, and a plain client meeting a TLS port is told so (issue #23.2)."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import grpc
import pytest
from support import ServerProcess, make_tls_files, write_config

from protocol import baidu_std as bs
from protocol.brpc_meta_pb2 import RpcMeta
from protocol.wire import PIPELINE_SERVICE

MB = 1000 * 1000
BIG = 60 * MB  # under max_request_bytes (64 MiB): only the token can refuse it
CALLS = 4  # concurrent unauthenticated calls; before the fix each one cost its whole message
TOKEN = "first-token-for-rotation-0123456789"
NEW_TOKEN = "second-token-after-rotation-0123456789"


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def reset_peak_rss(pid: int) -> int:
    """Reset VmHWM to the current RSS (Linux clear_refs 5) and return it: the model load's peak is forgotten."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_rss_bytes(pid)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens.txt"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o644)  # readable by others: the server warns
    return path


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, tiny_model_dir, token_file):
    """Plain text, tokens required, every door."""
    cfg = write_config(tmp_path_factory.mktemp("srv") / "config.yml", tiny_model_dir,
                       top={"auth": {"token_file": str(token_file)}})
    server = ServerProcess(cfg)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, tiny_model_dir, tls_files):
    """TLS on every door, no tokens."""
    tls = {"cert_file": str(tls_files["server_cert"]), "key_file": str(tls_files["server_key"])}
    cfg = write_config(tmp_path_factory.mktemp("srv") / "config.yml", tiny_model_dir, top={"tls": tls})
    server = ServerProcess(cfg)
    yield server
    server.stop()


def send_big_brpc_frame(port: int, results: list) -> None:
    """A 60 MB PipelineService frame without a token, streamed from one 1 MB buffer; records what came back."""
    meta = RpcMeta(correlation_id=1)
    meta.request.service_name, meta.request.method_name = PIPELINE_SERVICE, "inference"
    raw = meta.SerializeToString()
    chunk = bytes(MB)
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(b"PRPC" + struct.pack(">II", len(raw) + BIG, len(raw)) + raw)
            for _ in range(BIG // MB):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    results.append(answer)


def test_brpc_unauthenticated_big_frames_are_not_buffered(auth_server):
    pid, port = auth_server.proc.pid, auth_server.ports["brpc"]
    before = reset_peak_rss(pid)
    results: list[bytes] = []
    threads = [threading.Thread(target=send_big_brpc_frame, args=(port, results)) for _ in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    grew = peak_rss_bytes(pid) - before
    assert len(results) == CALLS
    assert grew < 20 * MB, f"server peak RSS grew {grew / MB:.0f} MB for {CALLS} refused 60 MB frames"
    answered = [bs.decode_frame(r) for r in results if r]  # a reset may swallow the answer; the close is certain
    assert all(f.meta.response.error_code == bs.Errno.ERPCAUTH for f in answered), answered
    assert "payload unread" in auth_server.log


def test_grpc_unauthenticated_big_calls_are_not_received(auth_server):
    pid, target = auth_server.proc.pid, f"127.0.0.1:{auth_server.ports['grpc']}"
    before = reset_peak_rss(pid)
    payload = bytes(BIG)
    options = [("grpc.max_send_message_length", 2 * BIG), ("grpc.max_receive_message_length", 2 * BIG)]
    codes: list[grpc.StatusCode] = []

    def call() -> None:
        with grpc.insecure_channel(target, options=options) as channel:
            inference = channel.unary_unary(f"/{PIPELINE_SERVICE}/inference")
            try:
                inference(payload, timeout=30)
            except grpc.RpcError as exc:
                codes.append(exc.code())

    threads = [threading.Thread(target=call) for _ in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    grew = peak_rss_bytes(pid) - before
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * CALLS
    assert grew < 20 * MB, f"server peak RSS grew {grew / MB:.0f} MB for {CALLS} refused 60 MB calls"
