"""`resnest serve --ray` on a local Ray instance (started once for this module, 2 replicas of the demo model,
loopback only): the PipelineClient and REST get the same answers as from `resnest serve`, and a replica
killed under load loses no more than its in-flight requests, which succeed when retried."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
import os
import signal
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import grpc
import pytest
import ray.serve  # noqa: F401  (make venv-test installs Ray: without it these tests fail, never skip)
import requests

from resnest_serving.client.pipeline_client import PipelineClient
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from support import ServerProcess, write_config

HOST = "127.0.0.1"
REPLICA_TITLE = "ray::ServeReplica:imagenet:ResNeStPipeline"
ENGINE_ARGV = ["-m", "resnest_serving.pipeline.engines"]
MAX_REQUEST_BYTES = 1_000_000


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table


def descendants(root: int) -> dict[int, str]:
    """Every live process below `root` (pid -> command line)."""
    table = processes()
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, cmdline) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdline
                frontier.append(pid)
    return found


def replicas(server: ServerProcess) -> dict[int, str]:
    return {pid: cmd for pid, cmd in descendants(server.proc.pid).items() if cmd.startswith(REPLICA_TITLE)}


def wait_for(condition, what: str, timeout: float = 60.0):
    """Poll `condition()` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(scope="module")
def demo_model_dir(tmp_path_factory) -> Path:
    """The trained demo checkpoint exported with ONNX (no int8: not needed here)."""
    from resnest_serving.demo.digits import ARCH, CHECKPOINT_PATH, LABELS_PATH
    from resnest_serving.export.exporter import ExportOptions, export

    out = tmp_path_factory.mktemp("ray-demo") / "bundle"
    return export(ExportOptions(arch=ARCH, out=out, checkpoint=CHECKPOINT_PATH, label_file=LABELS_PATH)).server_dir


@pytest.fixture(scope="module")
def config_path(tmp_path_factory, demo_model_dir) -> Path:
    return write_config(tmp_path_factory.mktemp("ray-cfg") / "config.yml", demo_model_dir,
                        op={"topk": 3, "batch_size": 4, "auto_batching_timeout": 2},
                        top={"brpc_port": None, "max_request_bytes": MAX_REQUEST_BYTES})


@pytest.fixture(scope="module")
def servers(config_path):
    """(`resnest serve`, `resnest serve --ray` with 2 replicas), started side by side; at teardown every
    process of the Ray instance must be gone (any left is killed by pid and fails the test)."""
    plain = ServerProcess(config_path, wait=False)
    ray = ServerProcess(config_path, timeout=150, wait=False,
                        extra_args=["--ray", "--ray-min-replicas", "2", "--ray-replica-cpus", "0.5"])
    try:
        plain.wait_ready()
        ray.wait_ready()
    except BaseException:
        plain.stop()
        ray.stop()
        raise
    yield plain, ray
    plain.stop()
    left = stop_ray(ray)
    assert not left, f"processes of the Ray instance left after stop (killed): {left}"


def stop_ray(server: ServerProcess) -> dict[int, str]:
    """SIGTERM `resnest serve --ray`, then wait for every process it started to exit; returns (and kills by
    pid) the ones still alive after the deadline."""
    tree = descendants(server.proc.pid)
    code = server.stop(timeout=60)
    assert code == 0, f"resnest serve --ray exited with {code}:\n{server.log[-3000:]}"
    deadline = time.monotonic() + 30
    alive = {pid: cmd for pid, cmd in tree.items() if Path(f"/proc/{pid}").exists()}
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {pid: cmd for pid, cmd in alive.items() if Path(f"/proc/{pid}").exists()}
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


@pytest.fixture(scope="module")
def images(image_paths, heldout_digits) -> list[tuple[str, bytes]]:
    digits = list(heldout_digits[0].items())[:6]
    return [(p.name, p.read_bytes()) for p in image_paths] + digits


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def client(server: ServerProcess) -> PipelineClient:
    c = PipelineClient()
    c.connect([f"{HOST}:{server.ports['grpc']}"])
    return c


def test_ready_file_names_ray_and_both_doors(servers):
    _, ray = servers
    assert set(ray.ports) == {"grpc", "http"}
    assert ray.info["engine"].startswith("ray ")
    assert len(replicas(ray)) == 2


def test_pipeline_client_same_answers(servers, images):
    plain, ray = servers
    ours, theirs = client(plain), client(ray)
    for name, data in images:
        want = ours.predict(feed_dict={"image": b64(data)}, fetch=["label", "prob"], timeout=30)
        got = theirs.predict(feed_dict={"image": b64(data)}, fetch=["label", "prob"], timeout=30)
        assert want.err_no == 0, (name, want.err_msg)
        assert got == want, name
    pair = {f"image{i}": b64(data) for i, (_, data) in enumerate(images[:2])}
    assert theirs.predict(feed_dict=pair, fetch=["label"], timeout=30) == ours.predict(feed_dict=pair, fetch=["label"], timeout=30)
    bad = {"image": "@@@"}  # not base64
    got = theirs.predict(feed_dict=bad, fetch=["label"], timeout=30)
    assert got.err_no == 5000 and got == ours.predict(feed_dict=bad, fetch=["label"], timeout=30)


def test_rest_same_answers(servers, images):
    plain, ray = servers

    def both(method: str, path: str, body: str | None = None) -> tuple[requests.Response, requests.Response]:
        return tuple(requests.request(method, server.url(path), data=body, timeout=30) for server in (plain, ray))

    for name, data in images[:4]:
        want, got = both("POST", "/imagenet/prediction", json.dumps({"key": ["image"], "value": [b64(data)]}))
        assert want.status_code == 200 and json.loads(want.content)["err_no"] == 0, name
        assert (got.status_code, got.content) == (want.status_code, want.content), name
    cases = [("POST", "/imagenet/prediction", "{not json"),  # 400 gateway error
             ("POST", "/wrong/prediction", "{}"),  # err_no 3002
             ("POST", "/imagenet/prediction", json.dumps({"key": ["x"], "value": ["@@@"]})),  # err_no 5000
             ("GET", "/imagenet/prediction", None),  # 405
             ("POST", "/a/b/c", "{}"),  # 404
             ("GET", "/health/live", None), ("GET", "/health/ready", None), ("GET", "/v2/health/ready", None)]
    for method, path, body in cases:
        want, got = both(method, path, body)
        assert (got.status_code, got.content, got.headers["content-type"]) == \
            (want.status_code, want.content, want.headers["content-type"]), (method, path)
    metrics = requests.get(ray.url("/metrics"), timeout=30)
    assert metrics.status_code == 200 and "resnest_batch_images" in metrics.text


class CallFailed(Exception):
    """A failed call: gRPC status or HTTP status, and the details the client got."""

    def __init__(self, protocol: str, code: str, details: str):
        super().__init__(f"{protocol} {code}: {details}")
        self.protocol, self.code, self.details = protocol, code, details


class Load:
    """PipelineClients (gRPC) and REST posts calling in a loop, half the threads each; every call is
    recorded as (start, end, CallFailed or None)."""

    def __init__(self, server: ServerProcess, payload: str, threads: int):
        self.server, self.payload = server, payload
        self.calls: list[tuple[float, float, CallFailed | None]] = []
        self.in_flight = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=("grpc" if i % 2 == 0 else "http",), daemon=True)
                        for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def call(self, protocol: str, grpc_client: PipelineClient, session: requests.Session) -> None:
        if protocol == "grpc":
            try:
                answer = grpc_client.predict(feed_dict={"image": self.payload}, fetch=["label"], timeout=60)
            except grpc.RpcError as exc:
                raise CallFailed("grpc", exc.code().name, exc.details()) from None
            assert answer.err_no == 0, answer.err_msg
        else:
            reply = session.post(self.server.url("/imagenet/prediction"), timeout=60,
                                 data=json.dumps({"key": ["image"], "value": [self.payload]}))
            if reply.status_code != 200:
                raise CallFailed("http", str(reply.status_code), reply.text)
            assert json.loads(reply.content)["err_no"] == 0, reply.text

    def _run(self, protocol: str) -> None:
        grpc_client, session = client(self.server), requests.Session()
        while not self.stop.is_set():
            with self.lock:
                self.in_flight += 1
            started, error = time.monotonic(), None
            try:
                self.call(protocol, grpc_client, session)
            except CallFailed as exc:
                error = exc
            with self.lock:
                self.in_flight -= 1
                self.calls.append((started, time.monotonic(), error))

    def ok_since(self, moment: float) -> int:
        with self.lock:
            return sum(1 for start, _, error in self.calls if start > moment and error is None)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)


def test_killed_replica_loses_only_its_in_flight_requests(servers, images):
    _, ray = servers
    before = replicas(ray)
    assert len(before) == 2, before
    victim = min(before)
    victim_engines = [pid for pid, cmd in descendants(victim).items() if " ".join(ENGINE_ARGV) in cmd]
    assert victim_engines, f"replica {victim} has no engine worker process"
    payload = b64(images[0][1])
    load = Load(ray, payload, threads=4)
    try:
        wait_for(lambda: load.ok_since(0) >= 20, "20 answers before the kill")
        with load.lock:
            in_flight_at_kill = load.in_flight
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: (lambda now: len(now) == 2 and victim not in now and now)(replicas(ray)),
                            "Ray to start a replacement replica")
        new_pid = (set(replaced) - set(before)).pop()
        # The replacement is serving once answers keep coming after it is up.
        up_at = time.monotonic()
        wait_for(lambda: load.ok_since(up_at) >= 20, "20 answers after the replacement started")
    finally:
        load.finish()
    failures = [(start, error) for start, _, error in load.calls if error is not None]
    assert len(failures) <= in_flight_at_kill, \
        f"{len(failures)} calls failed, more than the {in_flight_at_kill} in flight at the kill"
    for start, error in failures:
        assert start < killed_at, "a call started after the kill failed"
        if error.protocol == "grpc":
            assert error.code in ("INTERNAL", "UNAVAILABLE"), error
            assert "died" in error.details or "unavailable" in error.details.lower(), error.details
        else:
            assert error.code in ("500", "503"), error
    assert all(not Path(f"/proc/{pid}").exists() for pid in victim_engines), "the killed replica's engine lives on"
    assert not Path(f"/proc/{victim}").exists()
    assert new_pid in replicas(ray)
    # The failed calls succeed when retried.
    retry, session = client(ray), requests.Session()
    for _, error in failures:
        load.call(error.protocol, retry, session)  # raises CallFailed if the retry fails too
    print(f"killed replica {victim} with {in_flight_at_kill} call(s) in flight: {len(failures)} failed, "
          f"{len(load.calls)} calls in all; errors: {[str(e)[:200] for _, e in failures]}")


def _socket_address(hexaddr: str) -> tuple[str, int]:
    """/proc/net/tcp* "0100007F:1F90" → ("127.0.0.1", 8080) (IPv6 too)."""
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    return socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *struct.unpack("<4I", raw))), int(port, 16)


def listening_sockets(pids) -> list[tuple[int, str, str, int]]:
    """(pid, kind, address, port) of every listening TCP socket and bound UDP socket the processes hold."""
    by_inode = {}
    for kind in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{kind}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == ("0A" if kind.startswith("tcp") else "07"):  # LISTEN / UDP bound
                by_inode[int(fields[9])] = (kind, *_socket_address(fields[1]))
    found = []
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and int(link[8:-1]) in by_inode:
                found.append((pid, *by_inode[int(link[8:-1])]))
    return found


def is_loopback_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_every_process_ray_starts_listens_on_loopback_only(servers):
    """host 127.0.0.1: the doors, GCS, raylet, every worker, the agents and Serve's proxies and replicas."""
    _, ray = servers
    tree = {ray.proc.pid: "resnest serve --ray", **descendants(ray.proc.pid)}
    sockets = listening_sockets(tree)
    ports = {port for _, _, _, port in sockets}
    assert {ray.ports["grpc"], ray.ports["http"]} <= ports, (ray.ports, sockets)
    titles = {tree[pid].split()[0].rsplit("/", 1)[-1] for pid, *_ in sockets}
    for name in ("gcs_server", "raylet", "ray::ProxyActor", "ray::DashboardAgent", "ray::ServeReplica"):
        assert any(title.startswith(name) for title in titles), (name, titles)
    exposed = [(pid, tree[pid][:60], kind, address, port) for pid, kind, address, port in sockets
               if not is_loopback_address(address)]
    assert not exposed, f"sockets of the Ray instance on a non-loopback address: {exposed}"
    assert "Ray's own processes (GCS, raylet, workers, agents) on 127.0.0.1 only" in ray.log


def test_grpc_request_over_max_request_bytes_is_refused_as_without_ray(servers):
    plain, ray = servers
    body = pb.Request(key=["image"], value=["A" * MAX_REQUEST_BYTES])
    while body.ByteSize() > MAX_REQUEST_BYTES + 1:  # the length prefixes take a few bytes
        body.value[0] = body.value[0][: MAX_REQUEST_BYTES + 1 - body.ByteSize()]
    assert body.ByteSize() == MAX_REQUEST_BYTES + 1
    for server in (plain, ray):
        with grpc.insecure_channel(f"{HOST}:{server.ports['grpc']}") as channel:
            stub = pb_grpc.PipelineServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.inference(body, timeout=60)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, server.info
            assert f"larger than max ({MAX_REQUEST_BYTES + 1} vs. {MAX_REQUEST_BYTES})" in info.value.details()
            body.value[0] = body.value[0][:-1]  # at the limit: read, then refused as not base64 (err_no 5000)
            assert stub.inference(body, timeout=60).err_no == 5000
            body.value[0] += "A"


def test_gzip_and_deflate_bodies_as_without_ray(servers, images):
    """Ray's HTTP path inflates with the same code: same answers, and the same 413 for a gzip bomb."""
    plain, ray = servers
    body = json.dumps({"key": ["image"], "value": [b64(images[0][1])]}).encode()
    bomb = gzip.compress(b"{" + b" " * (MAX_REQUEST_BYTES + 10) + b"}")
    cases = [("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)), ("gzip", bomb)]
    for encoding, data in cases:
        got = [requests.post(server.url("/imagenet/prediction"), data=data, timeout=60,
                             headers={"Content-Encoding": encoding}) for server in (plain, ray)]
        assert (got[1].status_code, got[1].content) == (got[0].status_code, got[0].content), encoding
    assert got[0].status_code == 413 and "max_request_bytes" in got[0].json()["message"]
