"""The soak's request mix (bench/soak.py): valid requests and hostile ones over gRPC, REST and bRPC, each
checked against its documented answer. One `Worker` per client thread; `SCENARIOS` weighs the mix.

Hostile requests: a 30000x30000 PNG bomb (built in memory, ~200 KB on the wire), bad base64, truncated JPEGs,
bodies over max_request_bytes, a gzip bomb, and slow clients that send half a request and stall.
"""

from __future__ import annotations

import base64
import random
import socket
import struct
import time
import zlib
from dataclasses import dataclass

MIB = 1024 * 1024
ANSWER_S = 30.0  # a request without an answer after this long counts as dropped


def png_of_zeros(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A complete greyscale PNG of zeros: small on the wire, width x height pixels once decoded (the shape of
    a decompression bomb; also used by the tests)."""
    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class Unexpected(Exception):
    """The server answered, but not as documented for this request."""


@dataclass
class Target:
    host: str
    ports: dict[str, int]
    max_request_bytes: int
    read_timeout_s: float
    pid: int | None = None


class Worker:
    """One client thread: its own REST session, gRPC channel and bRPC connection."""

    def __init__(self, target: Target, images: list[bytes], seed: int):
        import grpc
        import requests

        from resnest_serving.protocol.brpc_client import SyncBrpcClient

        self.target = target
        self.images = images
        self.rng = random.Random(seed)
        self.session = requests.Session()
        self.channel = grpc.insecure_channel(f"{target.host}:{target.ports['grpc']}",
                                             options=[("grpc.max_send_message_length", 256 * MIB)])
        self.brpc = SyncBrpcClient(target.host, target.ports["brpc"], timeout=ANSWER_S)

    def close(self) -> None:
        self.session.close()
        self.channel.close()
        self.brpc.close()

    # each scenario returns "ok" or "refused" (the documented answer), or raises Unexpected

    def paddle(self, protocol: str, values: list[str]):
        """One Paddle Serving request over `protocol`; the pb.Response (REST: rebuilt from its JSON)."""
        from resnest_serving.protocol import pipeline_service_pb2 as pb
        from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
        from resnest_serving.protocol.wire import PIPELINE_SERVICE

        keys = [f"image{i}" for i in range(len(values))]
        request = pb.Request(key=keys, value=values)
        if protocol == "grpc":
            return pb_grpc.PipelineServiceStub(self.channel).inference(request, timeout=ANSWER_S)
        if protocol == "brpc":
            return self.brpc.call_message(PIPELINE_SERVICE, "inference", request, pb.Response, timeout=ANSWER_S)
        reply = self.session.post(self.url("/imagenet/prediction"), json={"key": keys, "value": values},
                                  timeout=ANSWER_S)
        if reply.status_code != 200:
            raise Unexpected(f"HTTP {reply.status_code}: {reply.text[:200]}")
        answer = reply.json()
        return pb.Response(err_no=answer["err_no"], err_msg=answer["err_msg"])

    def url(self, path: str) -> str:
        return f"http://{self.target.host}:{self.target.ports['http']}{path}"

    def expect(self, protocol: str, values: list[str], err_no: int, fragment: str = "") -> str:
        answer = self.paddle(protocol, values)
        if answer.err_no != err_no or fragment not in answer.err_msg:
            raise Unexpected(f"err_no {answer.err_no} {answer.err_msg[:200]!r}, expected {err_no} {fragment!r}")
        return "ok" if err_no == 0 else "refused"

    def valid(self, protocol: str) -> str:
        return self.expect(protocol, [b64(self.rng.choice(self.images))], 0)

    def bomb(self, protocol: str) -> str:
        return self.expect(protocol, [b64(BOMB)], 5000, "exceeds the limit")

    def bad_base64(self, protocol: str) -> str:
        return self.expect(protocol, ["this is *not* base64 ==="], 5000, "not valid base64")

    def truncated_jpeg(self, protocol: str) -> str:
        image = self.rng.choice(self.images)
        return self.expect(protocol, [b64(image[: len(image) // 2])], 5000)

    def oversized(self, protocol: str) -> str:
        import grpc

        from resnest_serving.protocol import baidu_std as bs
        from resnest_serving.protocol import pipeline_service_pb2 as pb
        from resnest_serving.protocol.brpc_client import SyncBrpcClient
        from resnest_serving.protocol.wire import PIPELINE_SERVICE

        filler = "A" * (self.target.max_request_bytes + 1024)
        if protocol == "http":
            reply = self.session.post(self.url("/imagenet/prediction"), timeout=ANSWER_S,
                                      data=b'{"key": ["a"], "value": ["' + filler.encode() + b'"]}')
            if reply.status_code != 413:
                raise Unexpected(f"HTTP {reply.status_code} for an oversized body, expected 413")
            return "refused"
        if protocol == "grpc":
            try:
                self.paddle("grpc", [filler])
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return "refused"
                raise Unexpected(f"gRPC {exc.code()} for an oversized message, expected RESOURCE_EXHAUSTED") from None
            raise Unexpected("an oversized gRPC message was accepted")
        request = pb.Request(key=["a"], value=[filler]).SerializeToString()
        with SyncBrpcClient(self.target.host, self.target.ports["brpc"], timeout=ANSWER_S) as client:
            try:
                client.call(PIPELINE_SERVICE, "inference", request, timeout=ANSWER_S)
            except bs.BrpcError as exc:  # EREQUEST, or the connection closed under the body (documented)
                if exc.code in (bs.Errno.EREQUEST, bs.Errno.EEOF, bs.Errno.EFAILEDSOCKET):
                    return "refused"
                if exc.code == bs.Errno.ERPCTIMEDOUT:
                    raise
                raise Unexpected(f"bRPC {exc} for an oversized frame") from None
        raise Unexpected("an oversized bRPC frame was accepted")

    def gzip_bomb(self, protocol: str) -> str:
        """64 MiB of zeros as ~64 KB of gzip (REST; bRPC's compress_type path)."""
        from resnest_serving.protocol import baidu_std as bs
        from resnest_serving.protocol import pipeline_service_pb2 as pb
        from resnest_serving.protocol.wire import PIPELINE_SERVICE

        if protocol == "http":
            reply = self.session.post(self.url("/imagenet/prediction"), data=GZIP_BOMB, timeout=ANSWER_S,
                                      headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
            if reply.status_code != 413:
                raise Unexpected(f"HTTP {reply.status_code} for a gzip bomb, expected 413")
            return "refused"
        payload = pb.Request(key=["a"], value=["A" * (self.target.max_request_bytes + 1024)]).SerializeToString()
        frame = bs.encode_request(PIPELINE_SERVICE, "inference", payload, correlation_id=7,
                                  compress_type=bs.CompressType.GZIP)
        answer = raw_exchange(self.target.host, self.target.ports["brpc"], frame, half_close=False)
        frames = bs.FrameParser().feed(answer)
        if len(frames) != 1 or frames[0].meta.response.error_code != bs.Errno.EREQUEST:
            raise Unexpected(f"bRPC answered {answer[:120]!r} to a gzip bomb, expected EREQUEST")
        return "refused"

    def slow(self, protocol: str) -> str:
        """Half a request, then silence: REST 408 and close, bRPC close, both within request_read_timeout_s."""
        port = self.target.ports["http" if protocol == "http" else "brpc"]
        if protocol == "http":
            data = (b"POST /imagenet/prediction HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n{\"key\": [\"a\"], \"value\": [\"")
        else:
            data = b"PRPC" + struct.pack(">II", 100_000, 10) + b"\x00" * 100
        answer = raw_exchange(self.target.host, port, data, half_close=False,
                              within=self.target.read_timeout_s + ANSWER_S)
        if protocol == "http" and not answer.startswith(b"HTTP/1.1 408"):
            raise Unexpected(f"a stalled REST body got {answer[:80]!r}, expected 408")
        if protocol == "brpc" and answer:
            raise Unexpected(f"a stalled bRPC frame got {answer[:80]!r}, expected the connection closed")
        return "refused"


def raw_exchange(host: str, port: int, data: bytes, half_close: bool, within: float = ANSWER_S) -> bytes:
    """Send `data`, read until the server closes (or, for bRPC, one whole frame came); TimeoutError after
    `within` seconds."""
    from resnest_serving.protocol import baidu_std as bs

    deadline = time.monotonic() + within
    received = b""
    with socket.create_connection((host, port), timeout=within) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer from {host}:{port} within {within:g} s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
            if received.startswith(bs.MAGIC) and len(received) >= bs.HEADER_SIZE and \
                    len(received) >= bs.HEADER_SIZE + struct.unpack(">I", received[4:8])[0]:
                return received
            if received.startswith(b"HTTP/") and http_complete(received):
                return received  # (aiohttp then lingers up to 10 s reading what is left before closing)


def http_complete(data: bytes) -> bool:
    """Whether `data` holds a whole HTTP response with a Content-Length body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or 0)
    return False


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BOMB = png_of_zeros(30000, 30000)
_packer = zlib.compressobj(9, zlib.DEFLATED, 31)
GZIP_BOMB = b"".join(_packer.compress(bytes(MIB)) for _ in range(64)) + _packer.flush()
del _packer

# (scenario, protocols, weight): valid requests are most of the mix, as in production
SCENARIOS = [("valid", ("grpc", "http", "brpc"), 12), ("bomb", ("grpc", "http", "brpc"), 2),
             ("bad_base64", ("grpc", "http", "brpc"), 2), ("truncated_jpeg", ("grpc", "http", "brpc"), 2),
             ("oversized", ("grpc", "http", "brpc"), 1), ("gzip_bomb", ("http", "brpc"), 1),
             ("slow", ("http", "brpc"), 1)]
