"""The engine hand-off alone: what a batch costs to cross to an engine worker process and back, apart from
the model. On a near-zero-cost model (by default a "trivial" bundle: ResNeSt_tiny's export at a 224x224 crop
whose ONNX model is replaced by global average pooling + a linear layer + softmax, ~0.1 ms; ONNX Runtime and
OpenVINO run it, Paddle would run the tiny network itself, so it is left out by default) each engine is timed twice on the same batches, interleaved in blocks: called in this process (the engine's own
run time) and through `ProcessEngine` (copy into shared memory, pipe message, the worker waking, the same
run, the reply waking the event loop, the answer copied out). Their difference (medians) is the hand-off
per batch. Also printed: the bytes per image written to shared memory in each input form, uint8 pixels
(what the front door sends now) and float32 tensors (what it sent before, and what FP32 tensor requests
still send).

    python -m bench.handoff [--engines onnxruntime openvino] [--batches 1 4] [--calls 400] [--model-dir DIR]
    python -m bench.handoff --parts [--calls 2000]

`--parts` times each piece of the hand-off alone instead (no engine, no model): a bare ping-pong between two
processes (the floor on this machine), the pickled framing and the event loop's side of it, the message
encoding, the front door's and the worker's wake-ups with the message already waiting, and the copies in
and out of shared memory.

Not a test: the machines are shared and noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pickle
import socket
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from resnest_serving.pipeline.engines import AUTO_ORDER, open_runtime, start_engines
from resnest_serving.pipeline.engines.worker import INFER, OK, Channel
from resnest_serving.pipeline.pixels import Normalizer
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions

log = logging.getLogger(__name__)

BLOCK = 25  # calls per block; blocks of the two ways alternate so both see the same machine load


def ensure_tiny(out_dir: Path, crop: int) -> Path:
    """ResNeSt_tiny, random weights, at `crop` (resize_short = crop * 8/7), exported once and reused."""
    from resnest_serving.export.exporter import ExportOptions, export

    target = out_dir / f"ResNeSt_tiny-{crop}"
    if not (target / "serving_server" / "inference.onnx").is_file():
        export(ExportOptions(arch="ResNeSt_tiny", out=target, random_init=True, force=True, crop_size=crop,
                             resize_short=round(crop * 8 / 7)))
    return target / "serving_server"


def ensure_trivial(out_dir: Path, crop: int) -> Path:
    """The tiny export at `crop` with its ONNX model replaced by avg-pool + linear + softmax (same input name
    and classes): an engine whose run costs next to nothing, so the hand-off is what is left."""
    import shutil

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    target = out_dir / f"trivial-{crop}" / "serving_server"
    if not (target / "inference.onnx").is_file():
        shutil.copytree(ensure_tiny(out_dir, crop), target, dirs_exist_ok=True)
        feed = onnx.load(str(target / "inference.onnx")).graph.input[0]
        classes = ModelBundle.load(target).meta.class_num
        weight = np.random.default_rng(0).standard_normal((3, classes)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("GlobalAveragePool", [feed.name], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
            "trivial", [feed], [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
            [numpy_helper.from_array(weight, "weight")])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(target / "inference.onnx"))
    return target


async def measure(bundle: ModelBundle, kind: str, threads: int, batches: list[int], calls: int) -> list[dict]:
    """Rows of median µs per batch, in process and through the worker, for each batch size and form."""
    size, max_batch = bundle.meta.crop_size, max(batches)
    options = EngineOptions(thread_num=threads)
    pixels = np.random.default_rng(0).integers(0, 256, (max_batch, size, size, 3), np.uint8)
    runtime, _ = open_runtime(bundle, (kind,), options, max_batch)
    tensors = runtime.normalize(pixels)
    (engine,) = await start_engines(bundle, kind, options, 1, max_batch)
    rows = []
    try:
        for form, batch in (("uint8 pixels", pixels), ("float32 tensor", tensors)):
            for bs in batches:
                x = batch[:bs]
                local, remote = [], []
                for _ in range(max(1, calls // BLOCK)):
                    for _ in range(BLOCK):
                        started = time.perf_counter()
                        runtime.infer(x)
                        local.append(time.perf_counter() - started)
                    for _ in range(BLOCK):
                        started = time.perf_counter()
                        await engine.infer(x)
                        remote.append(time.perf_counter() - started)
                alone, trip = float(np.median(local)) * 1e6, float(np.median(remote)) * 1e6
                rows.append({"engine": kind, "form": form, "batch": bs, "engine_us": alone, "round_trip_us": trip,
                             "handoff_us": trip - alone, "shm_bytes_per_image": int(x[0].nbytes)})
    finally:
        await engine.close()
        runtime.close()
    return rows


def normalize_us(bundle: ModelBundle, calls: int) -> float:
    """Median µs of the numpy conversion of one image (what the front door did before)."""
    size = bundle.meta.crop_size
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), np.uint8)
    normalize = Normalizer(bundle.meta.mean, bundle.meta.std)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        normalize(pixels)
        samples.append(time.perf_counter() - started)
    return float(np.median(samples)) * 1e6


# --------------------------------------------------------------------------------------------------
# --parts: each piece of the hand-off alone


def median_us(fn, calls: int) -> float:
    """Median µs of `fn()` over `calls` calls (medians: the cores are shared, the mean follows the noise)."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples)) * 1e6


class _Wire:
    """One end of a socketpair sending a batch's call and reading the answer in one of three ways: "bare" (20
    raw bytes, one syscall each way: the floor), "pickled" (tuples through multiprocessing's Connection, the
    worker protocol before) or "channel" (the worker's `Channel`, the protocol now)."""

    def __init__(self, sock: socket.socket, way: str):
        self.sock, self.way = sock, way
        self.conn = Connection(os.dup(sock.fileno())) if way == "pickled" else None
        self.channel = Channel(sock)
        self.buf = bytearray(Channel.HEADER.size)
        self.bare = Channel.HEADER.pack(INFER, 1, 1, 0, 7)

    def send(self, answer: bool = False) -> None:
        if self.way == "bare":
            self.sock.send(self.bare)
        elif self.way == "pickled":
            self.conn.send(("ok", 7) if answer else ("infer", 7, 1, True))
        else:
            self.channel.send(OK, 7) if answer else self.channel.send(INFER, 7, 1, True)

    def read(self) -> None:
        if self.way == "bare":
            if self.sock.recv_into(self.buf, len(self.buf), socket.MSG_WAITALL) != len(self.buf):
                raise EOFError
        elif self.way == "pickled":
            self.conn.recv()
        else:
            self.channel.recv()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.channel.close()


def _echo_child(sock: socket.socket, other_end: socket.socket, way: str, busy_s: float = 0.0) -> int:
    """Fork a process that answers every call on `sock` the `way` it came, until EOF: a worker whose engine
    takes no time, or keeps its core busy `busy_s` per call (meanwhile the caller's core goes idle, and
    waking an idle core costs more than waking a busy one)."""
    pid = os.fork()
    if pid:
        return pid
    other_end.close()
    wire = _Wire(sock, way)
    try:
        while True:
            wire.read()
            started = time.perf_counter()
            while time.perf_counter() - started < busy_s:
                pass
            wire.send(answer=True)
    except (EOFError, OSError):
        pass
    os._exit(0)


def _ping_pong(calls: int, way: str, loop_side: str | None = None, busy_s: float = 0.0) -> float:
    """Median µs of one round trip to a forked echo process, less its `busy_s`; the caller blocks in a read
    (`loop_side` None), or awaits the answer on an asyncio loop with a reader added per call ("per call") or
    kept ("kept")."""
    ours, theirs = socket.socketpair()
    pid = _echo_child(theirs, ours, way, busy_s)
    theirs.close()
    wire = _Wire(ours, way)
    try:
        if loop_side is None:
            return median_us(lambda: (wire.send(), wire.read()), calls) - busy_s * 1e6
        return asyncio.run(_loop_round_us(wire, wire, calls, loop_side == "kept")) - busy_s * 1e6
    finally:
        wire.close()
        os.waitpid(pid, 0)


class _LoopSide:
    """Awaits a message on a `_Wire` through the event loop, as the front door does: a reader added and removed
    per message (`kept` False, before), or one reader kept that reads and resolves the waiting future (now)."""

    def __init__(self, wire: _Wire, kept: bool):
        self.wire, self.kept = wire, kept
        self.loop = asyncio.get_running_loop()
        self.waiting: asyncio.Future | None = None
        if kept:
            self.loop.add_reader(wire.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        self.wire.read()
        self.waiting.set_result(None)

    async def receive(self) -> None:
        self.waiting = ready = self.loop.create_future()
        if self.kept:
            return await ready
        self.loop.add_reader(self.wire.sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            self.loop.remove_reader(self.wire.sock.fileno())
        self.wire.read()

    def close(self) -> None:
        if self.kept:
            self.loop.remove_reader(self.wire.sock.fileno())


async def _loop_round_us(ours: _Wire, sender: _Wire, calls: int, kept: bool) -> float:
    """Median µs of a call sent on `sender` and awaited on `ours` through the loop. With `sender` the same wire
    as `ours` the call goes to an echo process (a round trip); with the other end of a socketpair it is
    already waiting when the clock starts (the loop's wake-up alone)."""
    side = _LoopSide(ours, kept)
    round_trip = sender is ours
    samples = []
    try:
        for _ in range(calls):
            if not round_trip:
                sender.send()
            started = time.perf_counter()
            if round_trip:
                ours.send()
            await side.receive()
            samples.append(time.perf_counter() - started)
    finally:
        side.close()
    return float(np.median(samples)) * 1e6


def _waiting_read_us(calls: int, way: str, kept: bool | None = None) -> float:
    """A call already waiting on a socket, read: blocking as the worker does (`kept` None), or through the
    event loop as the front door does (its wake-up alone: reader → callback → future → the awaiting task)."""
    ours, theirs = (_Wire(sock, way) for sock in socket.socketpair())
    try:
        if kept is not None:
            return asyncio.run(_loop_round_us(ours, theirs, calls, kept))
        samples = []
        for _ in range(calls):
            theirs.send()
            started = time.perf_counter()
            ours.read()
            samples.append(time.perf_counter() - started)
        return float(np.median(samples)) * 1e6
    finally:
        ours.close()
        theirs.close()


def _preprocess_us(size: int, calls: int) -> float:
    """Median µs of the front door's preprocessing of one photo-sized JPEG into `size` pixels (what a copy of
    its pixels saved would be set against)."""
    import cv2

    from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec

    rng = np.random.default_rng(4)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), np.uint8), (0, 0), 3)  # smooth, like a photo
    data = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    preprocess = Preprocessor(PreprocessSpec(resize_short=round(size * 8 / 7), crop_size=size))
    return median_us(lambda: preprocess.pixels_from_bytes("photo", data), calls)


def parts(size: int, classes: int, calls: int) -> list[tuple[str, float]]:
    """(part, median µs) for each piece of the hand-off, measured alone."""
    call, reply = ("infer", 7, 4, True), ("ok", 7)
    header, buf = Channel.HEADER, bytearray(Channel.HEADER.size)
    image = np.random.default_rng(2).integers(0, 256, (4, size, size, 3), np.uint8)
    block = np.zeros((4, size, size, 3), np.uint8)
    answer = np.random.default_rng(3).random((4, classes), np.float32)
    rows = [
        ("ping-pong with a process, 20 raw bytes, both blocking (the floor)", _ping_pong(calls, "bare")),
        ("ping-pong, pickled tuples through Connection, both blocking (before)", _ping_pong(calls, "pickled")),
        ("ping-pong, worker Channel (fixed header), both blocking (now)", _ping_pong(calls, "channel")),
        ("message path before: pickled + loop reader added/removed per call", _ping_pong(calls, "pickled", "per call")),
        ("message path now: Channel + loop reader kept", _ping_pong(calls, "channel", "kept")),
        ("message path before, the worker busy 1 ms per call (less the 1 ms)",
         _ping_pong(calls // 4, "pickled", "per call", 1e-3)),
        ("message path now, the worker busy 1 ms per call (less the 1 ms)",
         _ping_pong(calls // 4, "channel", "kept", 1e-3)),
        ("encode+decode a call and its answer: pickle (before)", median_us(
            lambda: (pickle.loads(pickle.dumps(call)), pickle.loads(pickle.dumps(reply))), calls)),
        ("encode+decode a call and its answer: struct (now)", median_us(
            lambda: (header.unpack(header.pack(INFER, 1, 4, 0, 7)), header.pack_into(buf, 0, OK, 0, 0, 0, 7),
                     header.unpack_from(buf)), calls)),
        ("front door wake-up alone, reader per call, call waiting (before)", _waiting_read_us(calls, "pickled", False)),
        ("front door wake-up alone, reader kept, call waiting (now)", _waiting_read_us(calls, "channel", True)),
        ("worker read of a waiting call: Connection.recv, 2 reads + unpickle (before)",
         _waiting_read_us(calls, "pickled")),
        ("worker read of a waiting call: Channel.recv, 1 read + struct (now)", _waiting_read_us(calls, "channel")),
        (f"copy 1 image into shared memory ({image[0].nbytes:,} B)", median_us(
            lambda: np.copyto(block[:1], image[:1]), calls)),
        ("copy 4 images into shared memory", median_us(lambda: np.copyto(block, image), calls)),
        ("4 one-image requests: concatenate, then copy into shared memory", median_us(
            lambda: np.copyto(block, np.concatenate([image[i:i + 1] for i in range(4)])), calls)),
        ("4 one-image requests: concatenate straight into shared memory (out=)", median_us(
            lambda: np.concatenate([image[i:i + 1] for i in range(4)], out=block), calls)),
        ("for scale: preprocess one 640x480 JPEG (decode, resize, crop, BGR→RGB)", _preprocess_us(size, calls // 10)),
        (f"answer out of shared memory, 4 x {classes} float32: copy", median_us(lambda: answer.copy(), calls)),
        ("answer out: np.empty + slice assignment", median_us(
            lambda: np.empty_like(answer).__setitem__(slice(None), answer), calls)),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="an exported serving_server (default: the trivial model)")
    parser.add_argument("--crop", type=int, default=224, help="crop size of the default model")
    parser.add_argument("--engines", nargs="+", default=["onnxruntime", "openvino"], choices=AUTO_ORDER)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4], help="batch sizes")
    parser.add_argument("--calls", type=int, default=400, help="calls per way, batch size and form")
    parser.add_argument("--threads", type=int, default=1, help="math threads of the engine")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--parts", action="store_true", help="time each piece of the hand-off alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.parts:
        print(f"Hand-off parts, each alone, medians of {args.calls} calls ({args.crop}x{args.crop} uint8 images, "
              "1000 classes)\n\n| part | µs |\n|---|---:|")
        for part, us in parts(args.crop, 1000, args.calls):
            print(f"| {part} | {us:.1f} |")
        return 0
    bundle = ModelBundle.load(args.model_dir or ensure_trivial(args.out, args.crop))
    size = bundle.meta.crop_size
    rows = [row for kind in args.engines
            for row in asyncio.run(measure(bundle, kind, args.threads, args.batches, args.calls))]
    name = bundle.directory.parent.name if args.model_dir is None else bundle.meta.arch or "model"
    print(f"Engine hand-off, {name} {size}x{size}, {args.threads} thread(s), medians of "
          f"{args.calls} calls (interleaved blocks of {BLOCK})\n")
    print("| engine | form | batch | engine alone µs | through the worker µs | hand-off µs/batch | shm bytes/image |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['form']} | {r['batch']} | {r['engine_us']:.0f} | {r['round_trip_us']:.0f} | "
              f"{r['handoff_us']:.0f} | {r['shm_bytes_per_image']:,} |")
    pixel, tensor = size * size * 3, size * size * 3 * 4
    print(f"\nbytes per image through shared memory: {pixel:,} as uint8 pixels, {tensor:,} as float32 "
          f"(before: every image as float32), {tensor / pixel:.0f}x fewer")
    print(f"the front door no longer converts: numpy /255, mean/std and CHW cost {normalize_us(bundle, args.calls):.0f} µs "
          "per image (median, one thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
