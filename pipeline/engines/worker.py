"""Local engines in worker processes, fed through shared memory.

Why a process per engine instance: Paddle Inference's `predictor.run()` keeps the GIL for a whole batch,
which would stall every front door of the server's event loop; a crash inside a native library (oneDNN,
OpenVINO) takes down only the worker, which is restarted; OpenMP thread pools and `ONEDNN_*` settings stay
inside the worker.

Data path: the server copies each request of a batch straight into a shared-memory block (an input region
followed by `[max_batch, classes]` float32 outputs; no batch array is assembled first), sends one fixed-size
message (`Channel`: one write, one read each way, nothing pickled on the batch path) and awaits
the reply on its event loop through a reader kept for the worker's life (no thread, no reader added and
removed per batch); the worker runs the model on the shared rows and writes the probabilities back, and the
server copies them out once. The input region holds `max_batch` rows of either form (`pipeline.pixels`): a batch of
uint8 pixels `[rows, H, W, 3]` (the front door's images: 3·H·W bytes each) uses the start of it, a batch of
float32 tensors `[rows, 3, H, W]` (12·H·W bytes each: the Open Inference Protocol's FP32 input, a model
server's requests) all of it. A batch larger than `max_batch` runs as consecutive chunks. Only the start-up's
messages (the job, progress events, the report) are pickled.

The worker is a fresh interpreter (`python -m resnest_serving.pipeline.engines FD`, the socket's fd inherited), not a
`multiprocessing` child: nothing of the server's `__main__` is re-imported, so any script can start one.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from resnest_serving.pipeline.engines.base import EngineError, EngineUnavailable, StartReport
from resnest_serving.pipeline.engines.choose import log_event, open_runtime
from resnest_serving.pipeline.pixels import is_pixels
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0


def _views(shm: SharedMemory, max_batch: int, size: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The block's input region as float32 tensors [max_batch, 3, H, W] and as uint8 pixels
    [max_batch, H, W, 3] (the same bytes: a batch is one form), and its float32 outputs [max_batch, classes]."""
    tensors = np.ndarray((max_batch, 3, size, size), np.float32, buffer=shm.buf)
    pixels = np.ndarray((max_batch, size, size, 3), np.uint8, buffer=shm.buf)
    outputs = np.ndarray((max_batch, classes), np.float32, buffer=shm.buf, offset=tensors.nbytes)
    return tensors, pixels, outputs


# Message kinds (`Channel`). Server → worker: JOB (pickled job), INFER (flag: pixels), CLOSE. Worker → server:
# EVENT (pickled start-up event), READY (pickled StartReport), FAILED (pickled (text, unavailable)), OK, ERROR
# (UTF-8 text).
JOB, INFER, CLOSE, EVENT, READY, FAILED, OK, ERROR = range(1, 9)


class Channel:
    """The messages between server and worker on their socket: a fixed 20-byte header (kind, flag, rows, payload
    length, seq) and the payload. A batch's call and its answer are the header alone: one write and one read
    each way (pickle and `multiprocessing.Connection`'s framing cost ~15 µs more per round trip, measured with
    `bench.handoff --parts`). EOFError when the other side is gone."""

    HEADER = struct.Struct("<BB2xIIQ")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._header = bytearray(self.HEADER.size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: int, seq: int = 0, rows: int = 0, flag: bool = False, payload: bytes = b"") -> None:
        self.sock.sendall(self.HEADER.pack(kind, flag, rows, len(payload), seq) + payload)

    def send_pickled(self, kind: int, obj: object) -> None:
        self.send(kind, payload=pickle.dumps(obj))

    def recv(self) -> tuple[int, bool, int, int, bytes]:
        """(kind, flag, rows, seq, payload) of the next message, blocking."""
        if self.sock.recv_into(self._header, len(self._header), socket.MSG_WAITALL) != len(self._header):
            raise EOFError("the other side closed the socket")
        kind, flag, rows, length, seq = self.HEADER.unpack_from(self._header)
        return kind, bool(flag), rows, seq, self._read(length) if length else b""

    def _read(self, length: int) -> bytes:
        payload = bytearray(length)
        view, got = memoryview(payload), 0
        while got < length:
            n = self.sock.recv_into(view[got:], length - got)
            if not n:
                raise EOFError("the other side closed the socket")
            got += n
        return bytes(payload)

    def close(self) -> None:
        self.sock.close()


def _chunks(parts: Sequence[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """The rows of `parts`, in order, as consecutive chunks of at most `size` rows (slices, not copies)."""
    chunk: list[np.ndarray] = []
    rows = 0
    for part in parts:
        start = 0
        while start < part.shape[0]:
            take = min(size - rows, part.shape[0] - start)
            chunk.append(part[start:start + take])
            rows += take
            start += take
            if rows == size:
                yield chunk
                chunk, rows = [], 0
    if chunk:
        yield chunk


class _WorkerDied(Exception):
    def __init__(self, how: str):
        super().__init__(how)
        self.how = how


class ProcessEngine:
    """One engine instance in its own process (see the module docstring); implements `base.Engine`."""

    takes_pixels = True  # uint8 pixel batches are converted inside the engine (base.takes_pixels)

    def __init__(self, bundle: ModelBundle, kinds: Sequence[str], options: EngineOptions, max_batch: int,
                 name: str = "engine-0"):
        self.bundle = bundle
        self.kinds = tuple(kinds)
        self.options = options
        self.max_batch = max(1, max_batch)
        self.name = name
        self.report: StartReport | None = None
        size = bundle.meta.crop_size
        self._size = size
        self._classes = bundle.meta.class_num
        self._proc: subprocess.Popen | None = None
        self._channel: Channel | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None  # where the reply reader is kept
        self._waiting: asyncio.Future | None = None  # the next message's awaiter
        self._shm: SharedMemory | None = None
        self._tensors: np.ndarray | None = None
        self._pixels: np.ndarray | None = None
        self._outputs: np.ndarray | None = None
        self._seq = itertools.count(1)
        self._unanswered = 0  # seq of a call whose caller was cancelled before the reply came
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> StartReport:
        """Start the worker; under several kinds (engine: auto) a worker that crashes while trying one
        engine is replaced by a worker trying the next."""
        kinds = list(self.kinds)
        crashed: list[str] = []
        while True:
            try:
                self.report = await self._spawn(kinds)
                self.report.skipped[:0] = crashed
                return self.report
            except _WorkerDied as died:
                kind, _, how = died.how.partition(":")
                if len(kinds) == 1 or kind not in kinds or kind == kinds[-1]:
                    raise EngineError(f"engine {kind} ({self.options.precision}) crashed its worker process "
                                      f"during start-up:{how}") from None
                log.warning("engine auto: %s crashed its worker process,%s; trying the next engine", kind, how)
                crashed.append(f"{kind}: crashed the worker process,{how}")
                kinds = kinds[kinds.index(kind) + 1:]

    async def _spawn(self, kinds: Sequence[str]) -> StartReport:
        self._release()
        self._shm = SharedMemory(create=True, size=self.max_batch * (3 * self._size ** 2 + self._classes) * 4)
        self._tensors, self._pixels, self._outputs = _views(self._shm, self.max_batch, self._size, self._classes)
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen([sys.executable, "-m", "resnest_serving.pipeline.engines", str(theirs.fileno())],
                                          pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        self._channel = Channel(ours)
        self._channel.send_pickled(JOB, (self.bundle, tuple(kinds), self.options, self.max_batch, self._shm.name,
                                         self._classes))
        self._unanswered = 0
        trying = kinds[0]
        while True:
            try:
                kind, _, _, _, payload = await self._recv()
            except _WorkerDied as died:
                self._release()
                raise _WorkerDied(f"{trying}: {died.how}") from None
            if kind == EVENT:
                event, trying, why = pickle.loads(payload)
                log_event(event, trying, why)
            elif kind == READY:
                report: StartReport = pickle.loads(payload)
                log.info("%s (pid %d): %s", self.name, self._proc.pid, report.summary)
                return report
            else:
                text, unavailable = pickle.loads(payload)
                await self.close()
                raise (EngineUnavailable if unavailable else EngineError)(text)

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        return await self.infer_parts((batch,))

    async def infer_parts(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities for `parts` (the requests of a batch, one form) taken as one batch in order: each is
        copied once, straight into the shared input rows (`base.infer_batch`)."""
        async with self._lock:
            if self._unanswered:  # a cancelled call's batch may still be running on the shared rows
                try:
                    await self._reply(self._unanswered)
                except EngineError:
                    pass  # that batch's caller is gone; a dead worker is replaced below
            if self._proc is None or self._proc.poll() is not None:
                if self.report is None:
                    raise EngineError(f"{self.name} is not started")
                log.warning("%s: the worker process is gone; starting a new one (%s)", self.name, self.report.kind)
                self.report = await self._spawn((self.report.kind,))
            pixels = is_pixels(parts[0])
            inputs = self._pixels if pixels else self._tensors
            for part in parts:
                if part.shape[1:] != inputs.shape[1:] or is_pixels(part) != pixels:
                    raise EngineError(f"{self.name}: a batch of {part.dtype} {list(part.shape)}; this engine takes "
                                      f"uint8 [N, {', '.join(map(str, self._pixels.shape[1:]))}] or float32 "
                                      f"[N, {', '.join(map(str, self._tensors.shape[1:]))}], one form per batch")
            out = np.empty((sum(part.shape[0] for part in parts), self._classes), np.float32)
            start = 0
            for chunk in _chunks(parts, self.max_batch):
                rows = sum(part.shape[0] for part in chunk)
                np.concatenate(chunk, out=inputs[:rows], casting="unsafe")
                seq = next(self._seq)
                try:
                    self._channel.send(INFER, seq, rows, pixels)
                except OSError:  # the worker is gone; _reply reads why
                    pass
                self._unanswered = seq
                await self._reply(seq)
                out[start:start + rows] = self._outputs[:rows]  # the one copy out: the rows are reused
                start += rows
            return out

    async def _reply(self, seq: int) -> None:
        try:
            while True:
                kind, _, _, got, payload = await self._recv()
                if got == seq and kind in (OK, ERROR):
                    break
        except _WorkerDied as died:
            self._release()
            raise EngineError(f"{self.name}: the {self.report.kind if self.report else ''} worker process "
                              f"died during a batch ({died.how}); it restarts on the next batch") from None
        self._unanswered = 0
        if kind == ERROR:
            raise EngineError(payload.decode(errors="replace"))

    async def _recv(self) -> tuple[int, bool, int, int, bytes]:
        """The worker's next message, awaited on the event loop; _WorkerDied when it exits.

        The socket's reader stays on the loop between messages (adding and removing it per message cost
        ~10 µs of the ~20 µs wake-up, `bench.handoff --parts`); it reads the message for whoever waits, and
        takes itself off while no one does (a cancelled call's late reply, or the EOF of a worker that died
        between batches, stays in the socket for the next call instead of waking the loop again and again)."""
        loop = asyncio.get_running_loop()
        if self._reader_loop is not loop:
            self._stop_reading()
            loop.add_reader(self._channel.fileno(), self._on_readable)
            self._reader_loop = loop
        self._waiting = loop.create_future()
        try:
            return await self._waiting
        except (EOFError, OSError):
            try:
                code = self._proc.wait(1.0)
            except subprocess.TimeoutExpired:
                code = None
            how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else
                   f"exit code {code}")
            raise _WorkerDied(how) from None
        finally:
            self._waiting = None

    def _on_readable(self) -> None:
        waiting = self._waiting
        if waiting is None or waiting.done():
            self._stop_reading()
            return
        try:
            waiting.set_result(self._channel.recv())
        except (EOFError, OSError) as exc:
            self._stop_reading()
            waiting.set_exception(exc)

    def _stop_reading(self) -> None:
        if self._reader_loop is not None and not self._reader_loop.is_closed() and self._channel is not None:
            self._reader_loop.remove_reader(self._channel.fileno())
        self._reader_loop = None

    async def close(self) -> None:
        """Ask an idle worker to exit, stop a busy one at once (its batch has no one left to answer); kill it if
        it does not exit within a few seconds; free the shared memory."""
        proc, channel = self._proc, self._channel
        if proc is not None and proc.poll() is None:
            if self._unanswered:
                proc.terminate()
            else:
                try:
                    channel.send(CLOSE)
                except OSError:
                    pass
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not exit in %.0f s; killing it", self.name, proc.pid, CLOSE_TIMEOUT_S)
                proc.kill()
                proc.wait()
        self._release()

    def _release(self) -> None:
        self._stop_reading()
        if self._channel is not None:
            self._channel.close()
        self._channel = self._proc = None
        self._unanswered = 0
        self._tensors = self._pixels = self._outputs = None  # views into the block: drop them before closing it
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None


# --------------------------------------------------------------------------------------------------
# The worker process


class _NativeErrors:
    """oneDNN reports why a primitive failed only on C stdout, with ONEDNN_VERBOSE=check (silent while all
    goes well). The worker sends its C stdout to a temporary file and adds that reason to error messages.
    Left alone when the user set ONEDNN_VERBOSE (then the lines go where the user expects them)."""

    def __init__(self):
        self.file = None
        if "ONEDNN_VERBOSE" not in os.environ:
            os.environ["ONEDNN_VERBOSE"] = "check"
            self.file = tempfile.TemporaryFile()
            os.dup2(self.file.fileno(), 1)

    def explain(self, message: str) -> str:
        if self.file is None:
            return message
        ctypes.CDLL(None).fflush(None)
        self.file.seek(0)
        lines = [line.split(",") for line in self.file.read().decode(errors="replace").splitlines()
                 if line.startswith("onednn_verbose") and ":check," in line]
        self.file.seek(0)
        self.file.truncate()
        if not lines or len(lines[-1]) < 6:
            return message
        primitive, reason = lines[-1][4], lines[-1][5]
        return f"{message} [oneDNN {primitive}: {reason}]"


def _import_paddle_quietly() -> None:
    """Import Paddle with its import-time notice about OMP_NUM_THREADS > 1 (set above on purpose, one OpenMP
    thread per math thread) kept off stderr; a failing import still raises."""
    import contextlib
    import importlib.util
    import io

    if importlib.util.find_spec("paddle") is None:
        return
    with contextlib.redirect_stderr(io.StringIO()):
        import paddle  # noqa: F401


def worker_main(fd: int) -> None:
    """The worker process: receive the job over the socket `fd`, open the engine, serve batches until told
    to close or the server is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the server decides
    warnings.filterwarnings("ignore", message="No ccache found")  # Paddle's import-time notice; it compiles nothing
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server (Linux)
    except (OSError, AttributeError):
        pass
    channel = Channel(socket.socket(fileno=fd))
    try:
        _, _, _, _, job = channel.recv()
    except (EOFError, OSError):
        return
    bundle, kinds, options, max_batch, shm_name, classes = pickle.loads(job)
    os.environ.setdefault("OMP_NUM_THREADS", str(options.thread_num))
    # OpenMP threads (Paddle Inference's libiomp5) spin for 200 ms after each parallel region by default: on a
    # machine with few cores that steals the front door's CPU between batches (measured on the tiny model with
    # the cores shared: 21 ms per batch spinning, 4 ms passive). Passive waiting, unless the user chose.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    if "paddle" in kinds:
        _import_paddle_quietly()
    native = _NativeErrors()
    shm = SharedMemory(name=shm_name)
    resource_tracker.unregister(shm._name, "shared_memory")  # the server owns (and unlinks) the block
    tensors, pixels, outputs = _views(shm, max_batch, bundle.meta.crop_size, classes)
    runtime = None
    try:
        try:
            runtime, report = open_runtime(bundle, kinds, options, max_batch,
                                           on_event=lambda *event: channel.send_pickled(EVENT, event))
        except Exception as exc:
            channel.send_pickled(FAILED, (native.explain(str(exc) if isinstance(exc, EngineError) else
                                                         f"{type(exc).__name__}: {exc}"),
                                          isinstance(exc, EngineUnavailable)))
            return
        channel.send_pickled(READY, report)
        while True:
            try:
                kind, is_pixel_batch, rows, seq, _ = channel.recv()
            except (EOFError, OSError):  # the server is gone
                return
            if kind != INFER:
                return
            try:
                out = runtime.infer((pixels if is_pixel_batch else tensors)[:rows])
                if out.shape != (rows, classes):
                    raise EngineError(f"output shape {list(out.shape)}, expected {[rows, classes]}")
                outputs[:rows] = out
                channel.send(OK, seq)
            except Exception as exc:
                channel.send(ERROR, seq, payload=native.explain(
                    f"engine {report.kind} ({report.precision}) failed on a batch of {rows} images: "
                    f"{type(exc).__name__}: {exc}").encode())
    finally:
        if runtime is not None:
            runtime.close()
        del tensors, pixels, outputs
        shm.close()
