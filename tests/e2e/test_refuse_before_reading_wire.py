"""Issue #24 on the binary doors, against real `resnest serve` processes: a caller the server will refuse costs
no message buffering (bRPC reads the meta and checks the token before the payload; gRPC refuses before grpcio
receives the message), calls per connection are capped, tokens rotate without a restart, secret files readable
by others are warned about, and a plain client meeting a TLS port is told so (issue #23.2)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests

from resnest_serving.client import Credentials, TransportError, connect
from resnest_serving.protocol import baidu_std as bs
from resnest_serving.protocol.brpc_meta_pb2 import RpcMeta
from resnest_serving.protocol.wire import PIPELINE_SERVICE
from support import ServerProcess, make_tls_files, write_config

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


PROTOCOL_DOOR = {"grpc": "grpc", "http": "http", "brpc": "brpc", "v2-http": "http", "v2-grpc": "grpc"}


def test_start_up_log_says_which_doors_have_tls_and_whether_tokens_are_required(auth_server, tls_server):
    """Issue #23.2 and #24.11: one line on TLS and tokens; a WARNING per secret file others may read."""
    assert ("security: no TLS (plain text on grpc, http, brpc); tokens required (auth.token_file "
            in auth_server.log)
    assert "security: TLS on grpc, http, brpc; no tokens required (auth off)" in tls_server.log
    assert "auth.token_file: " in auth_server.log and "is readable by group/others (mode 0o644)" in auth_server.log
    assert "tls.key_file: " in tls_server.log and "chmod 600 it" in tls_server.log


def test_plain_client_meeting_a_tls_port_is_told_so(tls_server, image_paths):
    from resnest_serving.client import TLS_HINT

    image = image_paths[0].read_bytes()
    for protocol, door in PROTOCOL_DOOR.items():
        with connect(protocol, f"127.0.0.1:{tls_server.ports[door]}", timeout=10) as client:
            with pytest.raises(TransportError) as info:
                client.classify([image])
        assert str(info.value).endswith(TLS_HINT), (protocol, str(info.value))
    with socket.socket() as sock:  # a port nobody listens on: refused, and no word about TLS
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with connect("brpc", f"127.0.0.1:{closed}", timeout=5) as client:
        with pytest.raises(TransportError) as info:
            client.classify([image])
    assert TLS_HINT not in str(info.value)


def test_tokens_rotate_without_a_restart(auth_server, token_file, image_paths):
    """Issue #24.11: after SIGHUP, or after the file changes, the old token stops working and the new one works
    (REST and gRPC; bRPC checks the token when a connection opens)."""
    import signal

    image = image_paths[0].read_bytes()
    http, grpc_endpoint = f"127.0.0.1:{auth_server.ports['http']}", f"127.0.0.1:{auth_server.ports['grpc']}"

    def works(token: str) -> dict[str, bool]:
        out = {}
        reply = requests.get(f"http://{http}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        out["http"] = reply.status_code == 200
        for protocol, endpoint in (("grpc", grpc_endpoint), ("brpc", f"127.0.0.1:{auth_server.ports['brpc']}")):
            with connect(protocol, endpoint, credentials=Credentials(token=token), timeout=10) as client:
                try:
                    out[protocol] = bool(client.classify([image])[0].label)
                except TransportError:
                    out[protocol] = False
        return out

    everywhere, nowhere = dict.fromkeys(("http", "grpc", "brpc"), True), dict.fromkeys(("http", "grpc", "brpc"), False)
    assert works(TOKEN) == everywhere and works(NEW_TOKEN) == nowhere
    token_file.write_text(f"{NEW_TOKEN}\n")
    auth_server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "token(s) reloaded" not in auth_server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "auth: 1 token(s) reloaded from" in auth_server.log and "(SIGHUP)" in auth_server.log
    assert works(NEW_TOKEN) == everywhere and works(TOKEN) == nowhere

    token_file.write_text(f"# back to the first one, no signal this time\n{TOKEN}\n")
    time.sleep(1.1)  # the file is looked at once a second
    assert works(TOKEN) == everywhere and works(NEW_TOKEN) == nowhere
    assert "(the file changed)" in auth_server.log

    token_file.write_text("")  # an emptied file does not turn auth off
    time.sleep(1.1)
    assert works(TOKEN) == everywhere and works("x" * 20) == nowhere
    assert "token file not reloaded" in auth_server.log
    assert auth_server.proc.poll() is None
