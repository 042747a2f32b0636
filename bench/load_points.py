"""One served load point, measured: a `resnest serve` child process started from a written config, the client
benchmark against one of its doors, and what the server's processes and threads and the load generator (this
process) spent in CPU meanwhile (CPU time, never wall time), optionally with a py-spy profile of the front door (a flame graph, or the
raw stacks bench/stages.py splits). Used by the served benchmark (bench/served.py) and its batch-size
comparison (bench/batching.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

FRONT, LOOP, OTHER, ENGINE = "front door", "event-loop thread", "other threads", "engine workers"
LOADGEN = "load generator"  # this process: the client benchmark shares the machine's cores with the server


def start_server(model_dir: Path, engine: str, precision: str, args: argparse.Namespace, workdir: Path,
                 name: str = "", batch_size: int | None = None, lsc: dict | None = None, **extra):
    """A running `resnest serve` of `model_dir` (op settings from the bench's arguments, `extra` op keys and
    `lsc` local_service_conf keys on top)."""
    from resnest_serving.serving.launcher import ServerProcess, write_config

    workdir.mkdir(parents=True, exist_ok=True)
    op = {"batch_size": args.batch_size if batch_size is None else batch_size,
          "auto_batching_timeout": args.batch_timeout_ms, "engine": engine, **extra}
    config = write_config(workdir / f"bench_{engine}_{precision}{name}.yml", model_dir, op=op,
                          lsc={"thread_num": args.threads, "precision": precision, **(lsc or {})})
    return ServerProcess(config, timeout=300)


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds a process (or one of its threads) has used so far (/proc/PID[/task/TID]/stat)."""
    stat = Path(f"/proc/{pid}/stat") if tid is None else Path(f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def process_tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server process ("front door": its event-loop thread, whose id is the
    process id, and its other threads) and by its children ("engine workers")."""
    out = {FRONT: 0.0, LOOP: 0.0, OTHER: 0.0, ENGINE: 0.0}
    try:
        out[FRONT] = cpu_seconds(pid)
        out[LOOP] = cpu_seconds(pid, pid)
    except OSError:
        return out
    out[OTHER] = max(0.0, out[FRONT] - out[LOOP])  # includes threads that ended during the point
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                out[ENGINE] += cpu_seconds(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return out


def py_spy(pid: int, output: Path, seconds: float, raw: bool = False) -> subprocess.Popen:
    """Start py-spy sampling the front door (every thread, 200 Hz, without pausing it) for `seconds` into
    `output`: an SVG flame graph, or with `raw` the collapsed stacks bench/stages.py reads; the caller waits."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise RuntimeError("py-spy is needed for flame graphs and the stage split: pip install py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate",
                             "200", "--output", str(output), "--threads", "--nonblocking",
                             *(["--format", "raw"] if raw else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure_point(server, protocol: str, concurrency: int, image_paths: list[Path], args: argparse.Namespace,
                  name: str, repeats: int | None = None, profile: Path | None = None) -> dict:
    """One load point against a running server: the bench summary plus the server's CPU per request
    (`cpu_ms_per_request`, by process and front-door thread); a flame graph into args.flamegraph when set, and
    raw py-spy stacks into `profile` when given (summary["profile"])."""
    from resnest_serving.client.bench import BenchConfig, run_repeats

    repeats = args.repeats if repeats is None else repeats
    bench = BenchConfig(protocol=protocol, endpoint=f"127.0.0.1:{server.ports[protocol]}", images=image_paths,
                        concurrency=concurrency, duration=args.seconds, warmup=4, metrics_url=server.url("/metrics"))
    spies = []
    if getattr(args, "flamegraph", None):
        spies.append(py_spy(server.proc.pid, args.flamegraph / f"{name}.svg", args.seconds * repeats))
    if profile is not None:
        spies.append(py_spy(server.proc.pid, profile, args.seconds * repeats, raw=True))
    before = process_tree_cpu(server.proc.pid) | {LOADGEN: time.process_time()}
    run = asyncio.run(run_repeats(bench, repeats))
    after = process_tree_cpu(server.proc.pid) | {LOADGEN: time.process_time()}
    for spy in spies:
        spy.wait(60)
    requests_done = sum(len(r.samples) for r in run.reports) + bench.warmup  # warmed up once
    summary = run.median_report.summary()
    summary["figures"] = run.figures()
    summary["server"] = run.median_report.server
    summary["cpu_ms_per_request"] = {k: 1000 * (after[k] - before[k]) / max(1, requests_done) for k in after}
    if profile is not None:
        summary["profile"] = str(profile)
        summary["server_pid"] = server.proc.pid  # the event-loop thread's id in the profile
    log.info("%s: %.2f images/s, CPU/request %s", name, summary["images_per_s"],
             ", ".join(f"{k} {v:.2f} ms" for k, v in summary["cpu_ms_per_request"].items()))
    return summary
