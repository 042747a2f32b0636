"""Soak test (issue #11): a real server fed a mix of valid and hostile requests over gRPC, REST and bRPC for
a while, its resident memory sampled every second. Hostile requests: a 30000x30000 PNG bomb (built in
memory, ~200 KB on the wire), bad base64, truncated JPEGs, bodies over max_request_bytes, a gzip bomb, and
slow clients that send half a request and stall.

    python -m bench.soak --duration 60 [--model-dir DIR | --endpoint HOST --grpc-port P --http-port P
                                        --brpc-port P --pid PID --max-request-bytes N] [--concurrency 4]

Without --endpoint it exports ResNeSt_tiny (random weights) into --out once and starts `resnest serve` with
max_request_bytes 4 MiB and request_read_timeout_s 2 s (and MALLOC_MMAP_THRESHOLD_=1 MiB, see main). It prints the requests by scenario and outcome and
the server's RSS (VmRSS of its main process) after warm-up and at the end:

  * every request must get an answer: the expected one (a classification, or the documented refusal: err_no
    5000, HTTP 413/408, gRPC RESOURCE_EXHAUSTED, a bRPC EREQUEST or closed connection); no timeouts, no
    other answers;
  * memory must be flat: the median RSS of the last quarter of the run must be within 10 % of the median
    RSS of the window right after warm-up (the same length as that quarter). Warm-up (default a quarter of
    the run) is excluded: caches, thread pools and allocator arenas fill then. A drop is not a failure.

Exit status 0 when both hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import random
import socket
import statistics
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 1024 * 1024
ANSWER_S = 30.0  # a request without an answer after this long counts as dropped
FLAT_TOLERANCE = 0.10


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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class Unexpected(Exception):
    """The server answered, but not as documented for this request."""


@dataclass
class Target:
    host: str
    ports: dict[str, int]
    max_request_bytes: int
    read_timeout_s: float
    pid: int | None = None


@dataclass
class SoakReport:
    duration_s: float
    warmup_s: float
    outcomes: Counter = field(default_factory=Counter)  # (scenario, outcome) -> count
    latencies: dict[str, list[float]] = field(default_factory=dict)  # scenario -> seconds per request
    problems: list[str] = field(default_factory=list)  # first few unexpected answers / drops, for the log
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, RSS bytes)
    server_exit: int | None = None
    elapsed_s: float = 0.0  # until the last request in flight at `duration_s` was answered

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def count(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.outcomes.items() if o == outcome)

    @property
    def answered_as_documented(self) -> bool:
        return self.total > 0 and self.count("unexpected") == 0 and self.count("no answer") == 0

    def rss_windows(self) -> tuple[list[int], list[int]]:
        """(RSS samples right after warm-up, RSS samples of the last quarter): equal-length windows."""
        quarter = (self.duration_s - self.warmup_s) / 4 if self.duration_s > self.warmup_s else 0
        after = [r for t, r in self.samples if self.warmup_s <= t < self.warmup_s + quarter]
        end = [r for t, r in self.samples if self.duration_s - quarter <= t <= self.duration_s]
        return after, end

    def rss_verdict(self) -> tuple[str, int | None, int | None]:
        """("PASS" | "FAIL" | "INCONCLUSIVE", median after warm-up, median at the end)."""
        after, end = self.rss_windows()
        if len(after) < 3 or len(end) < 3:
            return "INCONCLUSIVE", None, None
        warm, last = int(statistics.median(after)), int(statistics.median(end))
        return ("PASS" if last <= warm * (1 + FLAT_TOLERANCE) else "FAIL"), warm, last

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    @property
    def verdict(self) -> str:
        """FAIL when a request was not answered as documented, RSS grew or the server exited; else
        INCONCLUSIVE when the run was too short (or unsampled) for the memory check; else PASS."""
        rss = self.rss_verdict()[0]
        if not self.answered_as_documented or rss == "FAIL" or self.server_exit is not None:
            return "FAIL"
        return rss

    def text(self) -> str:
        lines = [f"soak: {self.total} requests in {self.duration_s:g} s (warm-up {self.warmup_s:g} s; the last "
                 f"answer came at {self.elapsed_s:.1f} s)",
                 f"{'scenario':<24} {'outcome':<12} {'count':>7} {'p50 ms':>8} {'max ms':>8}"]
        for (scenario, outcome), n in sorted(self.outcomes.items()):
            seconds = sorted(self.latencies.get(scenario, [0.0]))
            lines.append(f"{scenario:<24} {outcome:<12} {n:>7} {1000 * seconds[len(seconds) // 2]:>8.1f} "
                         f"{1000 * seconds[-1]:>8.1f}")
        for outcome in ("ok", "refused", "unexpected", "no answer"):
            lines.append(f"  {outcome}: {self.count(outcome)}")
        lines += [f"  problem: {p}" for p in self.problems[:10]]
        verdict, warm, last = self.rss_verdict()
        after, end = self.rss_windows()
        if warm is not None:
            lines.append(f"RSS median after warm-up {warm / MIB:.1f} MiB ({len(after)} samples), at the end "
                         f"{last / MIB:.1f} MiB ({len(end)} samples): {100 * (last / warm - 1):+.1f} % "
                         f"(limit +{100 * FLAT_TOLERANCE:g} %)")
        if self.samples:
            lines.append(f"RSS min {min(r for _, r in self.samples) / MIB:.1f} MiB, max "
                         f"{max(r for _, r in self.samples) / MIB:.1f} MiB over {len(self.samples)} samples")
        lines.append(f"every request answered as documented: {'PASS' if self.answered_as_documented else 'FAIL'}")
        lines.append(f"RSS flat within {100 * FLAT_TOLERANCE:g} % after warm-up: {verdict}")
        if self.server_exit is not None:
            lines.append(f"the server exited with status {self.server_exit}: FAIL")
        if verdict == "INCONCLUSIVE":
            lines.append("  (too few RSS samples for the memory check: run longer, e.g. --duration 60, or give --pid)")
        lines.append(f"soak: {self.verdict}")
        return "\n".join(lines)


# -- the requests ----------------------------------------------------------------------------------------


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


def run_soak(target: Target, images: list[bytes], duration_s: float, warmup_s: float | None = None,
             concurrency: int = 4, seed: int = 0, server_proc=None, sample_interval_s: float = 1.0) -> SoakReport:
    """Drive `target` for `duration_s` with `concurrency` client threads; sample RSS of target.pid every
    `sample_interval_s`."""
    import grpc
    from resnest_serving.protocol.baidu_std import BrpcError, Errno

    warmup = duration_s / 4 if warmup_s is None else warmup_s
    report = SoakReport(duration_s=duration_s, warmup_s=warmup)
    lock = threading.Lock()
    started = time.monotonic()
    stop = threading.Event()

    def record(scenario: str, outcome: str, problem: str | None = None, seconds: float = 0.0) -> None:
        with lock:
            report.outcomes[(scenario, outcome)] += 1
            report.latencies.setdefault(scenario, []).append(seconds)
            if problem and len(report.problems) < 50:
                report.problems.append(f"{scenario}: {problem}")

    def sample() -> None:
        while not stop.is_set():
            if target.pid is not None:
                try:
                    report.samples.append((time.monotonic() - started, rss_bytes(target.pid)))
                except (OSError, RuntimeError):
                    pass
            stop.wait(sample_interval_s)

    choices = [(name, protocol) for name, protocols, weight in SCENARIOS for protocol in protocols
               for _ in range(weight)]

    def work(index: int) -> None:
        worker = Worker(target, images, seed * 1000 + index)
        try:
            while time.monotonic() - started < duration_s:
                name, protocol = worker.rng.choice(choices)
                scenario = f"{name}/{protocol}"
                begun = time.monotonic()
                try:
                    outcome, problem = getattr(worker, name)(protocol), None
                except Unexpected as exc:
                    outcome, problem = "unexpected", str(exc)
                except (TimeoutError, OSError) as exc:
                    outcome, problem = "no answer", f"{type(exc).__name__}: {exc}"
                except grpc.RpcError as exc:
                    outcome = "no answer" if exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                            grpc.StatusCode.UNAVAILABLE) else "unexpected"
                    problem = f"gRPC {exc.code()}: {exc.details()}"
                except BrpcError as exc:
                    outcome = "no answer" if exc.code in (Errno.ERPCTIMEDOUT, Errno.EEOF,
                                                          Errno.EFAILEDSOCKET) else "unexpected"
                    problem = str(exc)
                except Exception as exc:  # noqa: BLE001  (requests' errors and anything else: a failed request)
                    outcome, problem = "no answer", f"{type(exc).__name__}: {exc}"
                record(scenario, outcome, problem, time.monotonic() - begun)
                if server_proc is not None and server_proc.poll() is not None:
                    report.server_exit = server_proc.returncode
                    break
        finally:
            worker.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.elapsed_s = time.monotonic() - started
    stop.set()
    sampler.join()
    if server_proc is not None and server_proc.poll() is not None:
        report.server_exit = server_proc.returncode
    return report


def tiny_model(out: Path, label_file: Path | None) -> Path:
    """ResNeSt_tiny with random weights, exported once into `out`."""
    from resnest_serving.export.exporter import ExportOptions, export

    target = out / "ResNeSt_tiny"
    if not (target / "serving_server" / "serving_server_conf.prototxt").is_file():
        export(ExportOptions(arch="ResNeSt_tiny", out=target, random_init=True, force=True, seed=7,
                             label_file=label_file))
    return target / "serving_server"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--warmup", type=float, help="seconds excluded from the RSS check (default: a quarter)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, help="serving_server to serve (default: ResNeSt_tiny, random)")
    parser.add_argument("--endpoint", help="HOST of a running server (then give its ports and --pid)")
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--brpc-port", type=int)
    parser.add_argument("--pid", type=int, help="the running server's process id, for its RSS")
    parser.add_argument("--max-request-bytes", type=int, help="the server's max_request_bytes (default: 64 MiB "
                        "with --endpoint, 4 MiB for the server started here)")
    parser.add_argument("--read-timeout", type=float, help="the server's request_read_timeout_s (default 30 "
                        "with --endpoint, 2 for the server started here)")
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared data folder")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from resnest_serving.client.images import list_images

    images = [p.read_bytes() for p in list_images(args.shared / "data" / "images")]
    server = None
    if args.endpoint:
        if not (args.grpc_port and args.http_port and args.brpc_port):
            parser.error("--endpoint needs --grpc-port, --http-port and --brpc-port")
        if args.pid is None:
            log.warning("no --pid: RSS is not sampled, the memory check is INCONCLUSIVE")
        target = Target(args.endpoint, {"grpc": args.grpc_port, "http": args.http_port, "brpc": args.brpc_port},
                        args.max_request_bytes or 64 * MIB, args.read_timeout or 30.0, args.pid)
    else:
        from resnest_serving.serving.launcher import ServerProcess, write_config

        label_file = args.shared / "data" / "imagenet1k_label_list.txt"
        model_dir = args.model_dir or tiny_model(args.out, label_file if label_file.is_file() else None)
        limit, read_timeout = args.max_request_bytes or 4 * MIB, args.read_timeout or 2.0
        args.out.mkdir(parents=True, exist_ok=True)
        config = write_config(args.out / "soak_config.yml", model_dir, op={"batch_size": 4, "auto_batching_timeout": 2},
                              top={"max_request_bytes": limit, "request_read_timeout_s": read_timeout},
                              lsc={"thread_num": 1})
        # glibc keeps freed multi-MiB buffers in the heap (dynamic mmap threshold), so RSS would swing with the
        # mix of requests; a fixed 1 MiB threshold makes RSS track live memory. A leak still shows.
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MIB))
        server = ServerProcess(config, timeout=300)
        target = Target("127.0.0.1", server.ports, limit, read_timeout, server.proc.pid)
        log.info("server pid %d: %s", server.proc.pid, server.ports)
    try:
        report = run_soak(target, images, args.duration, args.warmup, args.concurrency, args.seed,
                          server.proc if server else None)
    finally:
        if server is not None:
            code = server.stop()
            log.info("server stopped (exit code %d)", code)
    print(report.text())
    if args.json:
        verdict, warm, last = report.rss_verdict()
        args.json.write_text(json.dumps({
            "outcomes": {f"{s} {o}": n for (s, o), n in sorted(report.outcomes.items())},
            "problems": report.problems, "rss_samples": report.samples, "rss_after_warmup": warm,
            "rss_end": last, "rss_verdict": verdict, "verdict": report.verdict, "passed": report.passed}, indent=1))
    return 1 if report.verdict == "FAIL" else 0  # INCONCLUSIVE: nothing failed, the memory check could not run


if __name__ == "__main__":
    sys.exit(main())
