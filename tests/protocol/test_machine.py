"""protocol/machine.py: the one /proc reader behind the engines' CPU checks and the benchmark fingerprint."""

from __future__ import annotations

from resnest_serving.client.fingerprint import machine_fingerprint
from resnest_serving.pipeline.engines import cpu
from resnest_serving.protocol import machine


def test_proc_field_reads_the_first_line_of_that_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\nflags\t\t: fpu avx2\n\nprocessor\t: 1\n"
                    "flags\t\t: fpu\n")
    assert machine.proc_field(str(info), "flags") == "fpu avx2"
    assert machine.proc_field(str(info), "model name") == "Some CPU @ 2.0GHz"
    assert machine.proc_field(str(info), "MemTotal") == ""
    assert machine.proc_field(str(tmp_path / "absent"), "flags") == ""


def test_engines_and_fingerprint_read_the_same_machine(monkeypatch):
    monkeypatch.delenv(cpu.FLAGS_OVERRIDE, raising=False)
    assert cpu.cpu_flags() == machine.cpu_flags()
    fingerprint = machine_fingerprint()
    assert set(fingerprint["flags"]) <= machine.cpu_flags()
    assert fingerprint["cpu"] == machine.cpu_model() == cpu.cpu_name()
