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
import struct
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
from resnest_serving.pipeline.engines import AUTO_ORDER, open_runtime, start_engines
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


PARTS_MESSAGE = struct.Struct("<BBHIQ")  # a fixed-size message like the worker's: kind, flag, rows, length, seq


def _median_us(fn, calls: int) -> float:
    """Median µs of `fn()` over `calls` calls (medians: the cores are shared, the mean follows the noise)."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples)) * 1e6


def _echo_child(sock: socket.socket, other_end: socket.socket, pickled: bool) -> int:
    """Fork a process that answers every message on `sock` until EOF: 16 raw bytes back for 16 raw bytes
    (`pickled` False), or a pickled ("ok", seq) for a pickled call through `Connection` (today's worker)."""
    pid = os.fork()
    if pid:
        return pid
    other_end.close()
    try:
        if pickled:
            conn = Connection(sock.fileno())
            while True:
                message = conn.recv()
                conn.send(("ok", message[1]))
        buf = bytearray(PARTS_MESSAGE.size)
        while sock.recv_into(buf, len(buf), socket.MSG_WAITALL) == len(buf):
            sock.send(buf)
    except (EOFError, OSError):
        pass
    os._exit(0)


def _ping_pong(calls: int, pickled: bool, loop_side: str | None) -> float:
    """Median µs of one round trip to a forked echo process; the caller blocks in a read (`loop_side` None),
    or awaits the reply on an asyncio loop with a reader added per call ("per call") or kept ("kept")."""
    ours, theirs = socket.socketpair()
    pid = _echo_child(theirs, ours, pickled)
    theirs.close()
    conn = Connection(os.dup(ours.fileno())) if pickled else None
    message = PARTS_MESSAGE.pack(1, 1, 1, 0, 7)
    buf = bytearray(PARTS_MESSAGE.size)
    try:
        if loop_side is None:
            if pickled:
                return _median_us(lambda: (conn.send(("infer", 7, 1, True)), conn.recv()), calls)
            return _median_us(lambda: (ours.send(message), ours.recv_into(buf, len(buf), socket.MSG_WAITALL)), calls)
        return asyncio.run(_loop_round_us(ours, ours, calls, loop_side == "kept"))
    finally:
        if conn is not None:
            conn.close()
        ours.close()
        os.waitpid(pid, 0)


class _LoopSide:
    """Awaits a fixed-size message on `sock` through the event loop, as the front door does: a reader added
    and removed per message (`kept` False), or one reader kept that reads and resolves the waiting future."""

    def __init__(self, sock: socket.socket, kept: bool):
        self.sock, self.kept = sock, kept
        self.buf = bytearray(PARTS_MESSAGE.size)
        self.loop = asyncio.get_running_loop()
        self.waiting: asyncio.Future | None = None
        if kept:
            self.loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        self.sock.recv_into(self.buf, len(self.buf), socket.MSG_WAITALL)
        self.waiting.set_result(None)

    async def receive(self) -> None:
        self.waiting = ready = self.loop.create_future()
        if self.kept:
            return await ready
        self.loop.add_reader(self.sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.recv_into(self.buf, len(self.buf), socket.MSG_WAITALL)

    def close(self) -> None:
        if self.kept:
            self.loop.remove_reader(self.sock.fileno())


async def _loop_round_us(ours: socket.socket, sender: socket.socket, calls: int, kept: bool) -> float:
    """Median µs of a message sent on `sender` and awaited on `ours` through the loop. With `sender` the same
    socket as `ours` the message goes to an echo process (a round trip); with the other end of a socketpair
    it is already waiting when the clock starts (the loop's wake-up alone)."""
    side = _LoopSide(ours, kept)
    message = PARTS_MESSAGE.pack(1, 1, 1, 0, 7)
    round_trip = sender is ours
    samples = []
    try:
        for _ in range(calls):
            if not round_trip:
                sender.send(message)
            started = time.perf_counter()
            if round_trip:
                ours.send(message)
            await side.receive()
            samples.append(time.perf_counter() - started)
    finally:
        side.close()
    return float(np.median(samples)) * 1e6


def _loop_wake_us(calls: int, kept: bool) -> float:
    """The front door's wake-up alone: reader → callback → future → the awaiting task, and the read, with
    the message already waiting (no other process involved)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        return asyncio.run(_loop_round_us(ours, theirs, calls, kept))


def _receive_us(calls: int, pickled: bool) -> float:
    """The worker's read of a message already waiting (its wake-up minus the scheduler): `Connection.recv`
    of a pickled call (two reads + unpickle) or one `recv_into` of a fixed-size message."""
    ours, theirs = socket.socketpair()
    conn_theirs, conn_ours = Connection(os.dup(theirs.fileno())), Connection(os.dup(ours.fileno()))
    message = PARTS_MESSAGE.pack(1, 1, 1, 0, 7)
    buf = bytearray(PARTS_MESSAGE.size)
    samples = []
    try:
        for _ in range(calls):
            if pickled:
                conn_theirs.send(("infer", 7, 1, True))
            else:
                theirs.send(message)
            started = time.perf_counter()
            if pickled:
                conn_ours.recv()
            else:
                ours.recv_into(buf, len(buf), socket.MSG_WAITALL)
                PARTS_MESSAGE.unpack_from(buf)
            samples.append(time.perf_counter() - started)
    finally:
        for closing in (conn_theirs, conn_ours, ours, theirs):
            closing.close()
    return float(np.median(samples)) * 1e6


def parts(size: int, classes: int, calls: int) -> list[tuple[str, float]]:
    """(part, median µs) for each piece of the hand-off, measured alone."""
    call, reply = ("infer", 7, 4, True), ("ok", 7)
    buf = bytearray(PARTS_MESSAGE.size)
    image = np.random.default_rng(2).integers(0, 256, (4, size, size, 3), np.uint8)
    block = np.zeros((4, size, size, 3), np.uint8)
    answer = np.random.default_rng(3).random((4, classes), np.float32)
    rows = [
        ("pipe ping-pong, 16 raw bytes each way, both blocking (the floor)", _ping_pong(calls, False, None)),
        ("pipe ping-pong, pickled tuples through Connection (today's framing)", _ping_pong(calls, True, None)),
        ("pipe ping-pong, loop side: add_reader/remove_reader per call", _ping_pong(calls, False, "per call")),
        ("pipe ping-pong, loop side: one reader kept for the engine's life", _ping_pong(calls, False, "kept")),
        ("encode+decode a call and its reply: pickle", _median_us(
            lambda: (pickle.loads(pickle.dumps(call)), pickle.loads(pickle.dumps(reply))), calls)),
        ("encode+decode a call and its reply: struct", _median_us(
            lambda: (PARTS_MESSAGE.unpack(PARTS_MESSAGE.pack(1, 1, 4, 0, 7)), PARTS_MESSAGE.pack_into(buf, 0, 0, 0, 0, 0, 7),
                     PARTS_MESSAGE.unpack_from(buf)), calls)),
        ("front door wake-up alone, reader per call (message waiting)", _loop_wake_us(calls, False)),
        ("front door wake-up alone, reader kept (message waiting)", _loop_wake_us(calls, True)),
        ("worker read of a waiting call: Connection.recv (2 reads + unpickle)", _receive_us(calls, True)),
        ("worker read of a waiting call: one recv_into + struct", _receive_us(calls, False)),
        (f"copy 1 image into shared memory ({image[0].nbytes:,} B)", _median_us(
            lambda: np.copyto(block[:1], image[:1]), calls)),
        ("copy 4 images into shared memory", _median_us(lambda: np.copyto(block, image), calls)),
        ("4 one-image requests: concatenate, then copy into shared memory", _median_us(
            lambda: np.copyto(block, np.concatenate([image[i:i + 1] for i in range(4)])), calls)),
        ("4 one-image requests: concatenate straight into shared memory (out=)", _median_us(
            lambda: np.concatenate([image[i:i + 1] for i in range(4)], out=block), calls)),
        (f"answer out of shared memory, 4 x {classes} float32: copy", _median_us(lambda: answer.copy(), calls)),
        ("answer out: np.empty + slice assignment", _median_us(
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
