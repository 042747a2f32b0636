"""The security promises of README "Limits and security" that need a client to misbehave on purpose, each
against a real `resnest serve` on loopback: health and readiness stay open under `auth:` (Paddle Serving and
V2 REST, V2 gRPC); `resnest predict`'s --tls-ca/--tls-cert/--tls-key/--token and $RESNEST_TOKEN; gRPC's
idle timeout; the TLS handshake timeout on every door; clients that trickle a byte at a time."""

from __future__ import annotations

import itertools
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import requests

from resnest_serving.protocol import grpc_predict_v2_pb2 as v2
from resnest_serving.protocol import grpc_predict_v2_pb2_grpc as v2_grpc
from support import REPO_ROOT, make_tls_files

TOKEN = "promise-token-0123456789abcdef"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def token_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens.txt"
    path.write_text(f"{TOKEN}\n")
    return str(path)


# -- health and readiness under auth ---------------------------------------------------------------------


def test_health_and_readiness_stay_open_under_auth(server_factory, tmp_path):
    server = server_factory(top={"auth": {"token_file": token_file(tmp_path)}})
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/v2/models/imagenet/ready"):
        reply = requests.get(server.url(path), timeout=10)
        assert reply.status_code == 200, (path, reply.status_code, reply.text)
    for path in ("/v2", "/v2/models/imagenet", "/metrics"):  # auth is on: the rest needs the token
        assert requests.get(server.url(path), timeout=10).status_code == 401, path
        assert requests.get(server.url(path), headers=bearer, timeout=10).status_code == 200, path

    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(v2.ServerLiveRequest(), timeout=10).live
        assert stub.ServerReady(v2.ServerReadyRequest(), timeout=10).ready
        assert stub.ModelReady(v2.ModelReadyRequest(name="imagenet"), timeout=10).ready
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelMetadata(v2.ModelMetadataRequest(name="imagenet"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name="imagenet"), timeout=10,
                                      metadata=[("authorization", f"Bearer {TOKEN}")])
        assert metadata.name == "imagenet"


# -- resnest predict with TLS and a token ----------------------------------------------------------------


def predict(protocol: str, endpoint: str, image: Path, *flags: str, env_token: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "RESNEST_TOKEN"}
    if env_token is not None:
        env["RESNEST_TOKEN"] = env_token
    return subprocess.run([sys.executable, "-m", "resnest_serving.cli", "predict", "--protocol", protocol, "--endpoint",
                           endpoint, "--json", "--timeout", "20", *flags, str(image)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_predict_cli_tls_flags_token_and_environment(server_factory, tmp_path, tls_files, image_paths):
    """Mutual TLS and auth on: `resnest predict` gets answers with --tls-ca/--tls-cert/--tls-key and the token
    from --token or $RESNEST_TOKEN (--token wins); without the token or the client certificate it fails."""
    tls = {"cert_file": str(tls_files["server_cert"]), "key_file": str(tls_files["server_key"]),
           "client_ca_file": str(tls_files["ca"])}
    server = server_factory(top={"tls": tls, "auth": {"token_file": token_file(tmp_path)}})
    image = image_paths[0]
    cert = ["--tls-ca", str(tls_files["ca"]), "--tls-cert", str(tls_files["client_cert"]),
            "--tls-key", str(tls_files["client_key"])]
    labels = set()
    for protocol in ("grpc", "http", "brpc"):
        endpoint = f"127.0.0.1:{server.ports[protocol]}"
        run = predict(protocol, endpoint, image, *cert, "--token", TOKEN)
        assert run.returncode == 0, (protocol, run.stderr[-2000:])
        (row,) = json.loads(run.stdout)
        labels.add(row["label"])
    assert len(labels) == 1

    http = f"127.0.0.1:{server.ports['http']}"
    run = predict("http", http, image, *cert, env_token=TOKEN)
    assert run.returncode == 0 and json.loads(run.stdout)[0]["label"] in labels, run.stderr[-2000:]
    failures = {
        "no token": predict("http", http, image, *cert),
        "--token wins over $RESNEST_TOKEN": predict("http", http, image, *cert, "--token", "w" * 20, env_token=TOKEN),
        "no client certificate": predict("http", http, image, "--tls-ca", str(tls_files["ca"]), "--token", TOKEN),
        "no TLS": predict("http", http, image, "--token", TOKEN),
    }
    for case, run in failures.items():
        assert run.returncode != 0, case
        rows = json.loads(run.stdout) if run.stdout.strip().startswith("[") else []
        assert not any("label" in row for row in rows), case
    assert "401" in failures["no token"].stdout + failures["no token"].stderr
    assert "401" in failures["--token wins over $RESNEST_TOKEN"].stdout


# -- timeouts that close connections -----------------------------------------------------------------------


def closed_after(sock: socket.socket, started: float, within: float) -> tuple[float, bytes]:
    """Seconds from `started` until the server closed `sock` (EOF or reset), and what it sent; fails when it
    stays open for `within` seconds."""
    sock.settimeout(max(0.01, started + within - time.monotonic()))
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            sock.settimeout(max(0.01, started + within - time.monotonic()))
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {within} s; got {data[:100]!r}")
    return time.monotonic() - started, data


def test_grpc_closes_an_idle_connection(server_factory):
    """idle_timeout_s reaches gRPC (grpc.max_connection_idle_ms): a client that opened HTTP/2 and then sends
    nothing gets GOAWAY "connection idle" and the connection is closed, at the timeout, not before."""
    server = server_factory(top={"idle_timeout_s": 1.5, "request_read_timeout_s": 30})
    sock = socket.create_connection(("127.0.0.1", server.ports["grpc"]))
    started = time.monotonic()
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))  # preface, SETTINGS
    took, data = closed_after(sock, started, within=6)
    assert 1.2 <= took, took
    frames, offset = [], 0
    while offset + 9 <= len(data):
        length, kind = int.from_bytes(data[offset:offset + 3], "big"), data[offset + 3]
        frames.append((kind, data[offset + 9:offset + 9 + length]))
        offset += 9 + length
    goaway = [payload for kind, payload in frames if kind == 0x7]
    assert goaway and b"idle" in goaway[0][8:], frames
    sock.close()


def test_tls_handshake_must_finish_within_request_read_timeout_on_every_door(server_factory, tls_files):
    """With tls:, a client that connects and never finishes the TLS handshake (sends nothing, or half a
    ClientHello) is closed at request_read_timeout_s on gRPC (grpc.server_handshake_timeout_ms), REST and bRPC,
    long before idle_timeout_s."""
    tls = {"cert_file": str(tls_files["server_cert"]), "key_file": str(tls_files["server_key"])}
    server = server_factory(top={"tls": tls, "idle_timeout_s": 60, "request_read_timeout_s": 1.5})
    for door in ("grpc", "http", "brpc"):
        for first_bytes in (b"", bytes.fromhex("16030100c8010000c40303")):  # nothing; a ClientHello's start
            sock = socket.create_connection(("127.0.0.1", server.ports[door]))
            started = time.monotonic()
            sock.sendall(first_bytes)
            took, data = closed_after(sock, started, within=5)
            assert 1.2 <= took and data == b"", (door, first_bytes, took, data)
            sock.close()
    assert requests.get(f"https://127.0.0.1:{server.ports['http']}/health/live", verify=str(tls_files["ca"]),
                        timeout=10).status_code == 200


def trickle(address: tuple[str, int], head: bytes, filler: bytes, gap: float = 0.2,
            within: float = 15.0) -> tuple[float, bytes]:
    """Send `head` one byte at a time, then `filler` bytes forever, one every `gap` seconds, until the server
    closes the connection; returns (seconds from the first byte to the close, what the server sent)."""
    sock = socket.create_connection(address)
    started = time.monotonic()
    data = b""
    try:
        for byte in itertools.chain(head, itertools.repeat(filler[0])):
            if time.monotonic() - started > within:
                pytest.fail(f"a client trickling a byte every {gap} s kept its connection {within} s")
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, data
            if select.select([sock], [], [], gap)[0]:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    return time.monotonic() - started, data
                if not chunk:
                    return time.monotonic() - started, data
                data += chunk
    finally:
        sock.close()
    raise AssertionError("unreachable")


def answered_408_at(address: tuple[str, int], head: bytes, gap: float = 0.2) -> tuple[float, float]:
    """Trickle a body after complete headers: (seconds until the 408 arrived, seconds until the close)."""
    sock = socket.create_connection(address)
    started, answered = time.monotonic(), None
    sock.sendall(head)
    try:
        while time.monotonic() - started < 15:
            try:
                sock.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], gap)[0]:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                if answered is None and chunk.startswith(b"HTTP/1.1 408"):
                    answered = time.monotonic() - started
    finally:
        sock.close()
    assert answered is not None, "no 408"
    return answered, time.monotonic() - started


SLOW = {"idle_timeout_s": 1.5, "request_read_timeout_s": 1.5}


def test_trickled_headers_and_frames_are_cut_off_at_the_timeout(server_factory):
    """A byte every 0.2 s (each well inside the 1.5 s timeouts) does not reset the timers: REST headers that
    never end are closed at idle_timeout_s, a bRPC frame that never ends at request_read_timeout_s, and a REST
    body that never ends gets its 408 at request_read_timeout_s; the server serves on."""
    server = server_factory(top=SLOW)
    http, brpc = ("127.0.0.1", server.ports["http"]), ("127.0.0.1", server.ports["brpc"])
    took, data = trickle(http, b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"a")
    assert took < 1.5 + 1.0 and data == b"", (took, data)
    took, data = trickle(brpc, b"PRPC" + struct.pack(">II", 4_000_000, 10), b"\0")
    assert took < 1.5 + 1.0 and data == b"", (took, data)
    answered, _ = answered_408_at(http, b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\nContent-Length: 100000"
                                        b"\r\n\r\n{")
    assert 1.2 <= answered < 1.5 + 1.0, answered
    assert requests.get(server.url("/health/live"), timeout=10).status_code == 200


@pytest.mark.xfail(strict=True, reason="finding (issue #18.4): the 408 comes at request_read_timeout_s, but the "
                   "server closes the connection about 2 s after it (with or without more bytes from the client)")
def test_trickled_body_connection_closed_at_request_read_timeout(server_factory):
    server = server_factory(top=SLOW)
    _, closed = answered_408_at(("127.0.0.1", server.ports["http"]),
                                b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
    assert closed < 1.5 + 1.0, closed
