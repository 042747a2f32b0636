"""Where each request's CPU goes inside the server, by stage.

The CPU figures come from /proc (CPU time of the front door's event-loop thread, of its other threads — the
preprocessing pool and gRPC's own threads — and of the engine worker processes) over one load point, per
request. The front door's two thread figures are split into stages by a py-spy profile of the same point
(200 Hz, idle samples left out): a sample counts for the stage of its innermost frame that belongs to one
(STAGES), and each stage gets the thread's CPU times its share of that thread's samples. So every stage row is
CPU, apportioned by sampling; the wall-time rows (`wall`) are the server's own stage histograms from /metrics
(mean per request, or per batch for queue wait and engine) and are latency, not CPU."""

from __future__ import annotations

import collections
import re
from pathlib import Path

from bench.load_points import ENGINE, FRONT, LOOP, OTHER

# (stage, file path fragments, function names or None for any; a name matches a method of any class). Checked
# in this order on each frame, from the innermost frame outwards; the first frame that matches any stage decides.
# Frames of the standard library, numpy, PIL, ... match none, so their time goes to the code that called them;
# a stack with no such frame at all goes to the first FALLBACKS entry one of its frames matches (innermost first).
STAGES: list[tuple[str, tuple[str, ...], tuple[str, ...] | None]] = [
    ("base64 decode", ("pipeline/preprocess.py",), ("b64decode_image",)),
    ("image header check", ("pipeline/preprocess.py",), ("read_header", "check_limits")),
    ("JPEG/PNG decode", ("pipeline/preprocess.py",), ("decode_image",)),
    ("resize + crop + RGB", ("pipeline/preprocess.py",), ("resize_crop", "pixels_from_bgr")),
    ("hash + response cache", ("pipeline/response_cache.py",), None),
    ("batching + queue", ("pipeline/batcher.py",), None),
    ("engine hand-off (shared memory, wake-up)", ("pipeline/engines/",), None),
    ("postprocess (top-k, labels)", ("pipeline/postprocess.py",), None),
    ("metrics", ("prometheus_client/", "serving/metrics.py"), None),
    ("protocol parsing + response encoding", ("serving/doors/", "serving/v2/", "/protocol/", "grpc/", "aiohttp/",
                                              "google/protobuf/", "json/", "multidict/", "yarl/"), None),
    ("pipeline + core bookkeeping", ("pipeline/pipeline.py", "serving/core.py", "serving/repository/"), None),
]
FALLBACKS: list[tuple[str, tuple[str, ...], tuple[str, ...] | None]] = [
    ("thread -> event loop wake-up (call_soon_threadsafe, self-pipe)", ("asyncio/",),
     ("call_soon_threadsafe", "_write_to_self")),
    ("event loop: epoll + GIL re-acquire", ("selectors.py",), None),
    ("socket I/O (asyncio transports)", ("asyncio/selector_events.py", "asyncio/sslproto.py"), None),
    ("thread pool: work queue + futures", ("concurrent/futures/", "threading.py", "queue.py", "asyncio/futures.py"),
     None),
]
GRPC_POLLER = "gRPC poller thread (C core)"  # grpcio's `_poll_wrapper` thread: Cython, no Python frames of its own
REST = "rest (event-loop callbacks and tasks, other threads)"
WALL_STAGES = ("preprocess", "queue_wait", "engine", "inference", "postprocess", "total")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):\d+\)$")
_THREAD = re.compile(r"^thread \((?P<tid>0x[0-9a-fA-F]+|\d+)\)")


def _first(frames: list[tuple[str, str]], table: list[tuple[str, tuple[str, ...], tuple[str, ...] | None]]
           ) -> str | None:
    for func, file in reversed(frames):
        for stage, fragments, funcs in table:
            if any(f in file for f in fragments) and (funcs is None or func.rpartition(".")[2] in funcs):
                return stage
    return None


def classify(frames: list[str]) -> str:
    """The stage of one sampled stack (outermost frame first; py-spy's "function (file:line)" frames)."""
    parsed = [(m["func"], m["file"]) for m in map(_FRAME.match, frames) if m]
    return _first(parsed, STAGES) or _first(parsed, FALLBACKS) or REST


def sample_shares(raw: Path, loop_tid: int) -> dict[str, dict[str, float]]:
    """Per thread group (LOOP: the thread `loop_tid`; OTHER: every other thread), each stage's share of its
    samples, from py-spy's raw (collapsed) output."""
    counts: dict[str, collections.Counter[str]] = {LOOP: collections.Counter(), OTHER: collections.Counter()}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = _THREAD.match(frames[0]) if frames else None
        if not thread or not count.isdigit():
            continue
        group = LOOP if int(thread["tid"], 0) == loop_tid else OTHER
        stage = GRPC_POLLER if "(_poll_wrapper)" in frames[0] else classify(frames[1:])
        counts[group][stage] += int(count)
    return {group: {stage: n / total for stage, n in c.items()} if (total := sum(c.values())) else {}
            for group, c in counts.items()}


def stage_split(summary: dict) -> dict[str, dict[str, float]]:
    """CPU ms per request by stage for one measured point (bench.load_points.measure_point with a profile):
    {stage: {LOOP: ms, OTHER: ms}}."""
    cpu = summary["cpu_ms_per_request"]
    shares = sample_shares(Path(summary["profile"]), summary["server_pid"])
    split: dict[str, dict[str, float]] = {}
    for group in (LOOP, OTHER):
        for stage, share in shares[group].items():
            split.setdefault(stage, {})[group] = share * cpu[group]
    return split


def stage_table(points: dict[str, dict]) -> list[str]:
    """A markdown table: one column per point (name → measure_point summary with a profile), one row per stage
    (CPU ms per request, event-loop thread + other threads), the process totals, then the wall-time stage means."""
    names = list(points)
    splits = {n: stage_split(points[n]) for n in names}
    head = ["| CPU ms per request (apportioned by py-spy samples) | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|"]
    rows = []
    for stage in [s for s, _, _ in STAGES + FALLBACKS] + [GRPC_POLLER, REST]:
        if not any(stage in splits[n] for n in names):
            continue
        cells = []
        for n in names:
            part = splits[n].get(stage, {})
            loop, other = part.get(LOOP, 0.0), part.get(OTHER, 0.0)
            cells.append(f"{loop + other:.2f} ({loop:.2f} + {other:.2f})")
        rows.append(f"| {stage} | " + " | ".join(cells) + " |")
    for label, key in ((f"= {FRONT} (/proc)", FRONT), (f"  of which {LOOP}", LOOP), (f"  of which {OTHER}", OTHER),
                       (f"{ENGINE} (/proc, separate processes)", ENGINE)):
        rows.append(f"| **{label}** | " + " | ".join(f"{points[n]['cpu_ms_per_request'][key]:.2f}" for n in names)
                    + " |")
    for stage in WALL_STAGES:
        cells = []
        for n in names:
            server = points[n].get("server") or {}
            mean = server.get("stages_ms", {}).get(stage, {}).get("mean_ms")
            cells.append(f"{mean:.2f}" if mean is not None else "-")
        per = "per batch" if stage in ("queue_wait", "engine") else "per request"
        rows.append(f"| wall ms: {stage} ({per}, /metrics) | " + " | ".join(cells) + " |")
    return head + rows + ["", "Cells: total (event-loop thread + other threads). CPU rows are /proc CPU time split "
                          "by the share of py-spy samples; wall rows are latency from the server's histograms."]
