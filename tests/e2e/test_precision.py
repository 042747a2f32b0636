"""`precision:` from a config.yml, end to end: a real `resnest serve` of the demo bundle (trained digits, with
the int8 model `resnest export --int8` wrote and the accuracy checks it recorded) at int8 and bf16.

Where the CPU (as `pipeline.engines.cpu.cpu_flags` sees it, under any ONEDNN_MAX_CPU_ISA cap) has the
instructions, the server starts on the engine `auto` picks, logs the accuracy check recorded at export for
that engine and precision, and answers the held-out digits like fp32; where it does not, start-up fails
with one error line naming each engine's reason and exit status 2, before any port opens. The override
(RESNEST_CPU_FLAGS, tests only) shows the refusal on every CPU."""

from __future__ import annotations

import re

import pytest

from resnest_serving.client import connect
from resnest_serving.demo.digits import LABELS_PATH
from resnest_serving.pipeline.engines import AUTO_ORDER, RUNTIMES
from resnest_serving.pipeline.engines.cpu import BF16_FLAGS, FLAGS_OVERRIDE, INT8_FLAGS
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions
from support import ServerProcess, write_config

DIGITS = 32  # (a request's limit) of the 296 held-out digits the export checked (the 64 before them calibrated int8)
NO_BF16_NO_VNNI = ",".join(f"-{flag}" for flag in (*BF16_FLAGS, *INT8_FLAGS))


def expected_engine(bundle: ModelBundle, precision: str) -> tuple[str | None, dict[str, str]]:
    """The engine `auto` should pick for `precision` here (None: none can), and why each other one cannot."""
    why = {kind: RUNTIMES[kind].unavailable(bundle, EngineOptions(thread_num=1, precision=precision))
           for kind in AUTO_ORDER}
    return next((kind for kind in AUTO_ORDER if why[kind] is None), None), {k: w for k, w in why.items() if w}


def start(tmp_path, model_dir, precision: str) -> ServerProcess:
    config = write_config(tmp_path / f"config-{precision}.yml", model_dir, op={"engine": "auto"},
                          lsc={"precision": precision}, top={"brpc_port": None})
    return ServerProcess(config, timeout=180, wait=False)


def assert_refused(server: ServerProcess, precision: str, why: dict[str, str]) -> None:
    """Start-up fails before any port opens: exit status 2, one ERROR line with every engine's reason."""
    with pytest.raises(RuntimeError, match=r"server did not start \(exit code 2\)"):
        server.wait_ready()
    log = server.log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"no engine can run this model at {precision}: " in errors[0], log[-3000:]
    for kind, reason in why.items():
        assert f"{kind}: {reason}" in errors[0], (kind, errors[0])
    assert "Traceback" not in log and not server.ports


def assert_serves(server: ServerProcess, bundle: ModelBundle, precision: str, kind: str,
                  digits: dict[str, bytes], labels: list[int]) -> None:
    try:
        server.wait_ready()
        log = server.log
        assert re.search(rf"engine {kind} {precision} chosen, auto", log), log[-3000:]
        recorded = bundle.meta.precision_checks[precision]["engines"][kind]["digits-heldout"]
        line = re.search(rf"accuracy check: {precision} on {kind} vs fp32: digits-heldout 296 images top-1 agreement "
                         rf"([\d.]+)%, max \|Δprob\| \S+; shared-images 5 images .*\(recorded at export on .*\)", log)
        assert line, log[-3000:]
        assert float(line.group(1)) / 100 == pytest.approx(recorded["top1_agreement"], abs=1e-4)
        names = list(digits)[64:64 + DIGITS]
        with connect("http", f"127.0.0.1:{server.ports['http']}") as client:
            answers = client.classify({name: digits[name] for name in names})
        names_of = [line.split(maxsplit=1)[1] for line in LABELS_PATH.read_text().splitlines()]
        right = sum(a.label == names_of[labels[64 + i]] for i, a in enumerate(answers))
        assert right >= DIGITS - 2, [(a.label, labels[64 + i]) for i, a in enumerate(answers)]
    finally:
        assert server.stop() == 0, server.log[-3000:]


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_precision_from_config_serves_or_is_refused(tmp_path, demo_export, heldout_digits, precision):
    bundle = ModelBundle.load(demo_export.server_dir)
    kind, why = expected_engine(bundle, precision)
    server = start(tmp_path, demo_export.server_dir, precision)
    if kind is None:  # this CPU (or the ISA cap, or the override) rules it out on every engine
        assert_refused(server, precision, why)
    else:
        assert_serves(server, bundle, precision, kind, *heldout_digits)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_precision_is_refused_on_a_cpu_without_the_instructions(tmp_path, demo_export, monkeypatch, precision):
    """RESNEST_CPU_FLAGS claiming neither bf16 nor VNNI: the same refusal text on every machine."""
    monkeypatch.setenv(FLAGS_OVERRIDE, NO_BF16_NO_VNNI)
    bundle = ModelBundle.load(demo_export.server_dir)
    kind, why = expected_engine(bundle, precision)
    assert kind is None
    needs = {"bf16": "has no bf16 instructions (avx512_bf16 or amx_bf16)",
             "int8": "has no int8 dot-product instructions (avx512_vnni or avx_vnni or amx_int8)"}[precision]
    for engine in (("openvino", "paddle") if precision == "bf16" else ("openvino", "onnxruntime")):
        assert f"flags as {FLAGS_OVERRIDE}='{NO_BF16_NO_VNNI}' says) {needs}" in why[engine]
    assert_refused(start(tmp_path, demo_export.server_dir, precision), precision, why)
