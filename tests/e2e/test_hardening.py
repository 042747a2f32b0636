"""Hostile input, slow clients, shutdown under load, TLS and tokens, against real `resnest serve` processes
(issue #11): each test reproduces one attack or failure and checks the server's answer and that it keeps
serving."""

from __future__ import annotations

import base64
import socket
import ssl
import struct
import threading
import time
import zlib
from pathlib import Path

import grpc
import pytest
import requests

from bench.soak_requests import png_of_zeros
from resnest_serving.client import Credentials, TransportError, connect
from resnest_serving.protocol import baidu_std as bs
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from resnest_serving.protocol.brpc_client import SyncBrpcClient
from resnest_serving.protocol.wire import PIPELINE_SERVICE
from support import make_tls_files

GIB = 1024 ** 3


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def post(server, body: dict) -> dict:
    reply = requests.post(server.url("/imagenet/prediction"), json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def closed_by_server(sock: socket.socket, within: float = 20.0) -> bytes:
    """Read until the server closes the connection (or `within` seconds pass: a failure); returns what came."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {within} s; got {data[:200]!r}")
    return data


# -- bounded memory and time per request ---------------------------------------------------------------


def test_decompression_bombs_and_strips_refused_before_decoding(server_factory, image_paths):
    """The issue's cases: a 30000x30000 1-bit PNG, twelve 15000x15000 PNGs in one request, 32 1x10000 strips in
    one request: each answered err_no 5000 naming the limit, the server's peak RSS stays far below what one
    decode would take (0.9-2.7 GB), and a real image is classified right after."""
    server = server_factory()
    bomb, medium, strip = png_of_zeros(30000, 30000), png_of_zeros(15000, 15000), png_of_zeros(1, 10000, 8)
    assert len(bomb) < 200_000 and len(medium) < 60_000
    answer = post(server, {"key": ["bomb"], "value": [b64(bomb)]})
    assert answer["err_no"] == 5000 and "30000x30000 = 900000000 pixels exceeds the limit of 40000000" in \
        answer["err_msg"]
    answer = post(server, {"key": [f"m{i}" for i in range(12)], "value": [b64(medium)] * 12})
    assert answer["err_no"] == 5000 and "15000x15000" in answer["err_msg"]
    answer = post(server, {"key": [f"s{i}" for i in range(32)], "value": [b64(strip)] * 32})
    assert answer["err_no"] == 5000 and "aspect ratio of 1e+04, over the limit of 20" in answer["err_msg"]
    assert peak_rss_bytes(server.proc.pid) < 0.75 * GIB
    answer = post(server, {"key": ["ok"], "value": [b64(image_paths[0].read_bytes())]})
    assert answer["err_no"] == 0, answer


def test_compressed_bodies_are_bounded_on_rest_and_brpc(server_factory):
    """1 GiB of zeros as a ~1 MB gzip body: REST 413 and bRPC EREQUEST, each naming max_request_bytes, while
    the server's peak RSS stays below 1.5 GB; unknown encodings are 415."""
    import gzip

    server = server_factory(top={"max_request_bytes": 4 * 1024 * 1024})
    zeros = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(zeros.compress(bytes(64 * 1024 * 1024)) for _ in range(16)) + zeros.flush()
    assert len(bomb) < 1_100_000
    reply = requests.post(server.url("/imagenet/prediction"), data=bomb, timeout=60,
                          headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert reply.status_code == 413 and "max_request_bytes" in reply.json()["message"]
    reply = requests.post(server.url("/imagenet/prediction"), data=b"{}", timeout=60,
                          headers={"Content-Encoding": "snappy"})
    assert reply.status_code == 415 and "'snappy' is not supported" in reply.json()["message"]

    request = pb.Request(key=["image"], value=["A" * (8 * 1024 * 1024)])  # 8 MiB inflated, ~10 KB as gzip
    with SyncBrpcClient("127.0.0.1", server.ports["brpc"], compress_type=bs.CompressType.GZIP) as client:
        with pytest.raises(bs.BrpcError) as info:
            client.call(PIPELINE_SERVICE, "inference", request.SerializeToString())
    assert info.value.code == bs.Errno.EREQUEST and "max_request_bytes" in info.value.text
    assert len(gzip.compress(request.SerializeToString())) < 20_000
    assert peak_rss_bytes(server.proc.pid) < 1.5 * GIB
    assert requests.get(server.url("/health/ready"), timeout=10).status_code == 200


# -- slow and greedy clients -----------------------------------------------------------------------------


def test_slow_and_greedy_clients_cost_only_their_connections(server_factory, image_paths):
    server = server_factory(top={"max_connections_per_peer": 4, "idle_timeout_s": 1, "request_read_timeout_s": 1})
    http, brpc = ("127.0.0.1", server.ports["http"]), ("127.0.0.1", server.ports["brpc"])

    # Headers sent a byte at a time and never finished (slowloris): closed at idle_timeout_s.
    slow_headers = socket.create_connection(http)
    slow_headers.sendall(b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\n")
    assert closed_by_server(slow_headers) == b""
    # A body that never arrives: 408 at request_read_timeout_s, and the connection is closed.
    slow_body = socket.create_connection(http)
    slow_body.sendall(b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"key\"")
    assert closed_by_server(slow_body).startswith(b"HTTP/1.1 408")
    # bRPC: an idle connection and a half-sent 4 MB frame are both closed.
    idle = socket.create_connection(brpc)
    assert closed_by_server(idle) == b""
    half = socket.create_connection(brpc)
    half.sendall(b"PRPC" + struct.pack(">II", 4_000_000, 10) + b"\x00" * 1000)
    assert closed_by_server(half) == b""

    # Per address: 4 connections are kept, the 5th is closed at once, on both doors.
    for door in (http, brpc):
        held = [socket.create_connection(door) for _ in range(4)]
        extra = socket.create_connection(door)
        assert closed_by_server(extra, within=5) == b""
        for sock in held:
            sock.close()
    # Meanwhile, and after, real requests are answered on every door.
    answer = post(server, {"key": ["ok"], "value": [b64(image_paths[0].read_bytes())]})
    assert answer["err_no"] == 0
    with SyncBrpcClient(*brpc) as client:
        reply = client.call_message(PIPELINE_SERVICE, "inference",
                                    pb.Request(key=["ok"], value=[b64(image_paths[1].read_bytes())]), pb.Response)
    assert reply.err_no == 0


def test_client_mistakes_get_protocol_errors_and_one_log_line(server_factory):
    server = server_factory()
    with socket.create_connection(("127.0.0.1", server.ports["http"])) as sock:
        sock.sendall(b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        assert b" 400 Bad Request" in closed_by_server(sock)
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        raw = channel.unary_unary(f"/{PIPELINE_SERVICE}/inference", request_serializer=None,
                                  response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff not a protobuf", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a serialized baidu.paddle_serving.pipeline_serving.Request" in info.value.details()
    assert requests.get(server.url("/health/live"), timeout=10).status_code == 200
    assert "http bad request: BadHttpMessage" in server.log and "Traceback" not in server.log


# -- shutdown --------------------------------------------------------------------------------------------


def test_sigterm_answers_everything_within_grace(server_factory, image_paths, variant_dirs):
    """Requests on all three doors that cannot finish within shutdown_grace_s (16 ResNeSt50 images each, one
    engine thread) are answered err_no 3001 at the grace, and the process exits 0 soon after."""
    grace = 1.0
    server = server_factory(op={"engine": "paddle", "batch_size": 1}, model_dir=variant_dirs["ResNeSt50"],
                            top={"shutdown_grace_s": grace})
    images = [b64(image_paths[i % len(image_paths)].read_bytes()) for i in range(16)]
    request = pb.Request(key=[f"k{i}" for i in range(16)], value=images)
    answers: dict[str, pb.Response] = {}

    def over_grpc():
        with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
            answers["grpc"] = pb_grpc.PipelineServiceStub(channel).inference(request, timeout=120)

    def over_http():
        reply = requests.post(server.url("/imagenet/prediction"), timeout=120,
                              json={"key": list(request.key), "value": list(request.value)})
        answers["http"] = pb.Response(**{k: v for k, v in reply.json().items() if k != "tensors"})

    def over_brpc():
        with SyncBrpcClient("127.0.0.1", server.ports["brpc"], timeout=120) as client:
            answers["brpc"] = client.call_message(PIPELINE_SERVICE, "inference", request, pb.Response)

    threads = [threading.Thread(target=f) for f in (over_grpc, over_http, over_brpc)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while 'resnest_stage_seconds_count{model="imagenet",stage="preprocess"} 3.0' not in requests.get(server.url("/metrics"),
                                                                                    timeout=10).text:
        assert time.monotonic() < deadline and all(t.is_alive() for t in threads)
        time.sleep(0.02)
    started = time.monotonic()
    assert server.stop() == 0
    took = time.monotonic() - started
    for thread in threads:
        thread.join(30)
    assert set(answers) == {"grpc", "http", "brpc"}
    for protocol, answer in answers.items():
        assert answer.err_no == 3001, (protocol, answer)
        assert "did not finish within shutdown_grace_s (1 s)" in answer.err_msg
    assert took < grace + 2.0, f"exit took {took:.1f} s with shutdown_grace_s {grace}"
    assert "answered 3 request(s) still in flight with err_no 3001" in server.log


# -- TLS and tokens --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


TOKEN = "s3cret-token-for-tests-0123456789"


def secured_server(server_factory, tmp_path, tls_files, mutual: bool = False):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"# rotated weekly\n{TOKEN}\nanother-valid-token-abcdef\n")
    tls = {"cert_file": str(tls_files["server_cert"]), "key_file": str(tls_files["server_key"])}
    if mutual:
        tls["client_ca_file"] = str(tls_files["ca"])
    return server_factory(top={"tls": tls, "auth": {"token_file": str(tokens)},
                               "dag": {"enable_prometheus": True, "prometheus_port": 0}})


def endpoints(server) -> dict[str, str]:
    return {"grpc": f"127.0.0.1:{server.ports['grpc']}", "http": f"127.0.0.1:{server.ports['http']}",
            "brpc": f"127.0.0.1:{server.ports['brpc']}", "v2-http": f"127.0.0.1:{server.ports['http']}",
            "v2-grpc": f"127.0.0.1:{server.ports['grpc']}"}


def test_tls_and_token_on_every_door(server_factory, tmp_path, tls_files, image_paths):
    server = secured_server(server_factory, tmp_path, tls_files)
    image = image_paths[0].read_bytes()
    good = Credentials(tls_ca=tls_files["ca"], token=TOKEN)
    labels = set()
    for protocol, endpoint in endpoints(server).items():
        with connect(protocol, endpoint, credentials=good, timeout=30) as client:
            labels.add(client.classify([image])[0].label)
        for wrong in (Credentials(tls_ca=tls_files["ca"]), Credentials(tls_ca=tls_files["ca"], token="x" * 20)):
            with connect(protocol, endpoint, credentials=wrong, timeout=30) as client:
                with pytest.raises(TransportError) as info:
                    client.classify([image])
            assert str(info.value.code) in {"401", "UNAUTHENTICATED", "ERPCAUTH"}, (protocol, info.value)
        with connect(protocol, endpoint, credentials=Credentials(token=TOKEN), timeout=10) as client:
            with pytest.raises(TransportError):  # plain text to a TLS-only port
                client.classify([image])
    assert len(labels) == 1
    context = ssl.create_default_context(cafile=str(tls_files["ca"]))
    https = f"https://127.0.0.1:{server.ports['http']}"
    assert requests.get(f"{https}/health/ready", verify=str(tls_files["ca"]), timeout=10).status_code == 200
    metrics = requests.get(f"{https}/metrics", verify=str(tls_files["ca"]), timeout=10)
    assert metrics.status_code == 401 and metrics.headers["WWW-Authenticate"].startswith("Bearer")
    for port in (server.ports["http"], server.ports["prometheus"]):
        reply = requests.get(f"https://127.0.0.1:{port}/metrics", verify=str(tls_files["ca"]), timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 200 and "resnest_requests_total" in reply.text
    with socket.create_connection(("127.0.0.1", server.ports["brpc"])) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock:
            assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")


def test_mutual_tls_needs_a_client_certificate(server_factory, tmp_path, tls_files, image_paths):
    server = secured_server(server_factory, tmp_path, tls_files, mutual=True)
    image = image_paths[0].read_bytes()
    with_cert = Credentials(tls_ca=tls_files["ca"], tls_cert=tls_files["client_cert"],
                            tls_key=tls_files["client_key"], token=TOKEN)
    for protocol, endpoint in endpoints(server).items():
        with connect(protocol, endpoint, credentials=with_cert, timeout=30) as client:
            assert client.classify([image])[0].label
        with connect(protocol, endpoint, credentials=Credentials(tls_ca=tls_files["ca"], token=TOKEN),
                     timeout=10) as client:
            with pytest.raises(TransportError):
                client.classify([image])


def test_non_loopback_without_tls_or_auth_warns(server_factory, tls_files, caplog):
    """The WARNING the server logs for the address it binds (serving.doors.security.warn_if_exposed, called directly
    with non-loopback addresses: tests bind loopback only); quiet on loopback and with TLS and auth."""
    from resnest_serving.serving.config.schema import TlsConfig
    from resnest_serving.serving.doors.security import TokenSet, warn_if_exposed

    tls = TlsConfig(cert_file=tls_files["server_cert"], key_file=tls_files["server_key"])
    tokens = TokenSet([TOKEN])
    with caplog.at_level("WARNING", logger="resnest_serving.serving.doors.security"):
        warn_if_exposed("0.0.0.0", TlsConfig(), TokenSet([]))
        assert ("listening on 0.0.0.0 without TLS (tls.cert_file/key_file) and without token auth "
                "(auth.token_file)") in caplog.text
        caplog.clear()
        warn_if_exposed("10.1.2.3", tls, TokenSet([]))
        assert "listening on 10.1.2.3 without token auth (auth.token_file)" in caplog.text
        caplog.clear()
        for host in ("127.0.0.1", "::1", "localhost"):
            warn_if_exposed(host, TlsConfig(), TokenSet([]))
        warn_if_exposed("0.0.0.0", tls, tokens)
        assert caplog.text == ""
    quiet = server_factory()
    assert requests.get(quiet.url("/health/live"), timeout=10).json() == {"status": "live"}
    assert "without TLS" not in quiet.log


def test_bad_security_config_stops_before_binding(tmp_path, tiny_model_dir, tls_files):
    from resnest_serving.serving.launcher import ServerProcess
    from support import write_config

    cases = {
        "tls: give cert_file and key_file together": {"tls": {"cert_file": str(tls_files["server_cert"])}},
        "auth.token_file: '/nonexistent/tokens' is not a file": {"auth": {"token_file": "/nonexistent/tokens"}},
    }
    short = tmp_path / "short.txt"
    short.write_text("short\n")
    cases["every token must be at least 16 characters"] = {"auth": {"token_file": str(short)}}
    for message, top in cases.items():
        config = write_config(tmp_path / "bad.yml", tiny_model_dir, top=top)
        with pytest.raises(RuntimeError) as info:
            ServerProcess(config, timeout=60)
        assert message in str(info.value), str(info.value)[-2000:]

