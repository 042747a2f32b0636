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


def test_handoff_parts_prints_every_part(capsys):
    """--parts times each piece alone (no model): a positive median for each, the floor first."""
    assert main(["--parts", "--crop", "64", "--calls", "40"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "µs" not in line]
    assert len(rows) == 20 and "(the floor)" in rows[0]
    assert all(float(row.rsplit("|", 2)[1]) > 0 for row in rows if "less the 1 ms" not in row)
