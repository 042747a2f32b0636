"""Refuse before reading (issue #24, the HTTP side), against real `resnest serve` processes with auth on:
no body byte is read, inflated or parsed for a caller the server refuses (order: auth → method → size →
parse), JSON is counted and parsed off the event loop, digits are parsed strictly, and neither answers nor
logs hand out the token or what is served. Peak RSS from /proc/PID/status (VmHWM), event-loop stalls from
a concurrent /health/live probe."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from support import REPO_ROOT, ServerProcess, write_config, write_token_file

TOKEN = "refuse-before-reading-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def gzip_of_zeros(size: int) -> bytes:
    """`size` zero bytes as one gzip member (60 MiB → ~60 KB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return packer.compress(bytes(size)) + packer.flush()


BOMB = gzip_of_zeros(60 * MIB)
EMPTY_MEMBERS = gzip.compress(b"", mtime=0) * 80_000  # 1.6 MB of empty 20-byte members


def metric(text: str, prefix: str) -> float:
    """The value of the first exposition line starting with `prefix` (0 when absent)."""
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("auth") / "tokens.txt", TOKEN)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, token_file):
    """Auth on, a separate Prometheus port, and the default 64 MiB body limit."""
    cfg = write_config(tmp_path_factory.mktemp("rbr") / "config.yml", tiny_model_dir,
                       top={"auth": {"token_file": str(token_file)},
                            "dag": {"enable_prometheus": True, "prometheus_port": 0}})
    server = ServerProcess(cfg)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model_server(tiny_model_dir, token_file):
    """`resnest serve --model-server` with its HTTP port, auth on."""
    lsc = "op.imagenet.local_service_conf"
    server = ServerProcess(REPO_ROOT / "configs" / "split_model_server.yml", {
        "brpc_port": 0, "http_port": 0, "shutdown_grace_s": 2, "auth.token_file": str(token_file),
        f"{lsc}.model_config": str(tiny_model_dir), f"{lsc}.thread_num": 1}, extra_args=["--model-server"])
    yield server
    server.stop()


def url(server, path: str, port: str = "http") -> str:
    return f"http://127.0.0.1:{server.ports[port]}{path}"


class Prober:
    """GET /health/live every 20 ms in a thread while a request runs: the slowest answer is how long the
    server's event loop stalled (at worst)."""

    def __init__(self, server):
        self.target, self.worst, self._stop = url(server, "/health/live"), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.perf_counter()
                assert session.get(self.target, timeout=30).status_code == 200
                self.worst = max(self.worst, time.perf_counter() - started)
                time.sleep(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.1)
        self._stop.set()
        self._thread.join()


def post_all(target: str, body: bytes, headers: dict, n: int = 8) -> list[int]:
    def one(_):
        try:
            return requests.post(target, data=body, headers=headers, timeout=30).status_code
        except requests.ConnectionError:  # the server answered and closed before taking the whole body
            return -1

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


# -- 1. open paths and unauthenticated callers: nothing read ---------------------------------------------


def test_open_paths_refuse_bodies_unread(server, model_server):
    """Eight concurrent POSTs of a 60 KB gzip body inflating to 60 MiB, without a token, on every open
    path of the HTTP port, the Prometheus port and the model server's HTTP port: 405 with the body unread
    (issue: +460 MB); a GET with a body 413; GET/HEAD without one still answered; peak RSS flat."""
    gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    targets = [url(server, p) for p in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready",
                                        "/v2/models/imagenet/ready")]
    targets += [url(server, "/health/live", "prometheus"), url(model_server, "/health/live")]
    before = {p.proc.pid: peak_rss(p.proc.pid) for p in (server, model_server)}
    for target in targets:
        assert set(post_all(target, BOMB, gz)) <= {405, -1}, target
        reply = requests.get(target, data=BOMB, headers=gz, timeout=30)
        assert reply.status_code == 413 and "takes no request body" in reply.json()["message"], target
    for pid, rss in before.items():
        assert peak_rss(pid) - rss < 40 * MIB, (pid, (peak_rss(pid) - rss) / MIB)
    assert requests.get(url(server, "/health/live"), timeout=10).status_code == 200
    assert requests.head(url(server, "/health/ready"), timeout=10).status_code == 200
    assert requests.get(url(server, "/v2/models/imagenet/ready"), timeout=10).status_code == 200


def test_protected_paths_check_token_before_reading(server, model_server):
    """Without a token, 60 MiB gzip bodies on the inference paths (and /metrics) are 401 unread; refusals
    before auth never move err_no 5000, only resnest_refused_requests_total."""
    gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    metrics = url(server, "/metrics", "prometheus")
    before_text = requests.get(metrics, headers=AUTH, timeout=10).text
    before = {p.proc.pid: peak_rss(p.proc.pid) for p in (server, model_server)}
    for target in (url(server, "/imagenet/prediction"), url(server, "/v2/models/imagenet/infer"),
                   url(server, "/metrics"), url(model_server, "/GeneralModelService/inference")):
        assert set(post_all(target, BOMB, gz)) <= {401, -1}, target
    for pid, rss in before.items():
        assert peak_rss(pid) - rss < 40 * MIB, (pid, (peak_rss(pid) - rss) / MIB)
    after_text = requests.get(metrics, headers=AUTH, timeout=10).text
    for protocol in ("http", "v2-http"):
        line = f'resnest_requests_total{{err_no="5000",model="imagenet",protocol="{protocol}"}}'
        assert metric(after_text, line) == metric(before_text, line), protocol
    refused = 'resnest_refused_requests_total{protocol="http",status="401"}'
    assert metric(after_text, refused) - metric(before_text, refused) >= 8


def test_method_checked_before_the_body(server):
    """With the token, eight concurrent PUTs (or GETs) of a 60 MiB gzip body to an inference path: 405
    with the body unread."""
    gz = {"Content-Encoding": "gzip", **AUTH}
    before = peak_rss(server.proc.pid)

    def one(method: str) -> int:
        try:
            return requests.request(method, url(server, "/imagenet/prediction"), data=BOMB, headers=gz,
                                    timeout=30).status_code
        except requests.ConnectionError:
            return -1

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, ["PUT", "GET", "DELETE", "PATCH"] * 2)) <= {405, -1}
    assert peak_rss(server.proc.pid) - before < 40 * MIB, (peak_rss(server.proc.pid) - before) / MIB


def test_declared_length_over_the_limit_refused_unread(server):
    """A Content-Length over max_request_bytes is 413 from the headers alone (nothing sent after them)."""
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        sock.sendall(b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                     b"\r\nContent-Length: 1000000000\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize("path", ["/imagenet/prediction", "/v2/models/imagenet/infer"])
def test_client_leaving_mid_body_is_one_log_line(server, path):
    """A client that closes its connection halfway through the body it declared: one INFO line naming it, no
    traceback in the log (aiohttp would log one at ERROR), and the server keeps serving."""
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Length: 100000\r\n\r\n".encode() + b"{" * 10)
        time.sleep(0.3)  # the guard is waiting for the rest
    line = f"http POST {path} from 127.0.0.1: 400 the client closed the connection before the whole request body"
    deadline = time.monotonic() + 10
    while line not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in server.log and "Traceback" not in server.log
    assert requests.get(url(server, "/health/ready"), timeout=10).status_code == 200


def expect_exchange(port: int, head: bytes) -> bytes:
    """Send request headers with `Expect: 100-continue` and no body; what the server answers first."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"Expect: 100-continue\r\n\r\n")
        return sock.recv(65536)


def test_expect_continue_refused_without_asking_for_the_body(server, model_server):
    """`Expect: 100-continue` (curl, for bodies over 1 MiB): a refused request is answered at once, without
    "100 Continue" (the client never sends its body); an accepted one is asked for it. V2 model load too."""
    token = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    length = b"Content-Length: 100000000\r\n"  # over the 64 MiB max_request_bytes
    for port, path in ((server.ports["http"], b"/imagenet/prediction"), (server.ports["http"], b"/v2/models/imagenet/infer"),
                       (server.ports["http"], b"/v2/repository/models/imagenet/load"),
                       (model_server.ports["http"], b"/GeneralModelService/inference")):
        answer = expect_exchange(port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + length)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:80]
        answer = expect_exchange(port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + token + length)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    answer = expect_exchange(server.ports["http"], b"POST /health/live HTTP/1.1\r\nHost: x\r\n" + length)
    assert answer.startswith(b"HTTP/1.1 405"), answer[:80]
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        sock.sendall(b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\n" + token +
                     b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


# -- 2. gzip members ----------------------------------------------------------------------------------


def test_empty_gzip_members_refused_fast(server):
    """1.6 MB of empty 20-byte gzip members (issue: 3.7 s of CPU, probes waiting 700 ms): on an open path
    405 unread; with the token, 413 at the member cap within a fraction of a second."""
    with Prober(server) as probe:
        started = time.perf_counter()
        reply = requests.post(url(server, "/health/live"), data=EMPTY_MEMBERS, timeout=30,
                              headers={"Content-Encoding": "gzip"})
        assert reply.status_code == 405
        reply = requests.post(url(server, "/imagenet/prediction"), data=EMPTY_MEMBERS, timeout=30,
                              headers={"Content-Encoding": "gzip", **AUTH})
        took = time.perf_counter() - started
    assert reply.status_code == 413 and "more than 64 members" in reply.json()["message"]
    assert took < 1.5, took
    assert probe.worst < 0.5, probe.worst


# -- 3. JSON off the event loop, with element limits ---------------------------------------------------


@pytest.mark.parametrize("path", ["/imagenet/prediction", "/v2/models/imagenet/infer"])
def test_huge_json_of_empty_lists_neither_stalls_nor_bloats(server, path):
    """A 60 MB body `{"zz":[[],[],...]}` (issue: loop blocked 7.3 s, +1.5 GB): 400 naming the limit,
    health probes answered meanwhile, peak RSS within a few hundred MB."""
    body = b'{"zz":[' + b"[]," * (20 * MIB) + b'[]]}'
    assert len(body) > 60 * MIB
    before = peak_rss(server.proc.pid)
    with Prober(server) as probe:
        reply = requests.post(url(server, path), data=body, headers=AUTH, timeout=60)
    assert reply.status_code == 400, reply.text[:300]
    assert "more than 100000 arrays and objects" in reply.text
    assert probe.worst < 1.0, probe.worst
    assert peak_rss(server.proc.pid) - before < 300 * MIB, (peak_rss(server.proc.pid) - before) / MIB


# -- 6. digits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("logid", ["²", "9" * 5000, "١٢"])
def test_paddle_logid_digits(server, logid):
    reply = requests.post(url(server, "/imagenet/prediction"), json={"key": [], "value": [], "logid": logid},
                          headers=AUTH, timeout=10)
    assert reply.status_code == 400 and "field 'logid' must be a 64-bit integer" in reply.json()["message"]


@pytest.mark.parametrize("log_id", ["²", "9" * 5000])
def test_model_server_log_id_digits(model_server, log_id):
    """The model server's `log-id` header: anything but ASCII digits is ignored (log id 0): the same answer
    as without the header (issue: HTTP 500 from int("²") and a logged traceback)."""
    target = url(model_server, "/GeneralModelService/inference")
    plain = requests.post(target, data=b"{}", headers=AUTH, timeout=10)
    reply = requests.post(target, data=b"{}", timeout=10, headers={"log-id": log_id.encode().decode("latin-1"),
                                                                     **AUTH})
    assert (reply.status_code, reply.text) == (plain.status_code, plain.text)
    assert "the request has no tensor" in reply.text
    assert "Error handling request" not in model_server.log and "Traceback" not in model_server.log


def test_model_server_http_takes_post_only(model_server):
    reply = requests.get(url(model_server, "/GeneralModelService/inference"), headers=AUTH, timeout=10)
    assert reply.status_code == 405


# -- 7. readiness says nothing about what is served ----------------------------------------------------


def test_readiness_of_an_unknown_model_names_nothing(server):
    """Readiness is open (no token): its 404 for an unknown model or version names nothing served."""
    for path, message in (("/v2/models/zzz/ready", "unknown model 'zzz'"),
                          ("/v2/models/imagenet/versions/7/ready", "model 'imagenet' has no version '7'")):
        reply = requests.get(url(server, path), timeout=10)
        assert reply.status_code == 404 and reply.json() == {"error": message}, reply.text


# -- 8. the token never reaches the log or the answer ----------------------------------------------------


def test_malformed_authorization_line_redacted(server):
    """A control byte after the token: aiohttp's parse error quotes the line; neither the answer nor the
    log may hold the token."""
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        sock.sendall(b"GET /imagenet/prediction HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                     b"\x01\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:100]
    assert TOKEN.encode() not in answer and b"redacted" in answer
    deadline = time.monotonic() + 5
    while "http bad request" not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "http bad request" in server.log and "redacted" in server.log
    assert TOKEN not in server.log
