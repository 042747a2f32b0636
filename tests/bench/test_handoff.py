"""The hand-off benchmark runs end to end on its trivial model: one row per form and batch size, and the
bytes per image of each form (a quarter for uint8 pixels)."""

from __future__ import annotations

from bench.handoff import main


def test_handoff_prints_rows_and_bytes(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--crop", "64", "--engines", "onnxruntime", "--batches", "1", "2",
                 "--calls", "25"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| onnxruntime |")]
    assert len(rows) == 4 and "| uint8 pixels | 1 |" in rows[0] and rows[0].endswith("| 12,288 |")
    assert rows[2].endswith("| 49,152 |")
    assert "12,288 as uint8 pixels, 49,152 as float32" in out and "4x fewer" in out
