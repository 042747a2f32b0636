"""`resnest demo`'s load-test folder: a second run (e.g. `DEMO_ARGS="--model-dir ..."` after the digits run)
replaces the images of the first instead of adding to them."""

from __future__ import annotations

from resnest_serving.demo.cli import write_bench_images

PNG = b"\x89PNG\r\n\x1a\n" + b"digit"
JPEG = b"\xff\xd8\xff\xe0" + b"photo"


def test_second_run_replaces_the_first_runs_images(tmp_path):
    folder = tmp_path / "bench_images"
    write_bench_images(folder, [PNG] * 32)
    (folder / "notes.txt").write_text("mine")  # not ours: left alone
    write_bench_images(folder, [JPEG] * 5)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"image_{i:03d}.jpg" for i in range(5)] + ["notes.txt"]
    assert all((folder / f"image_{i:03d}.jpg").read_bytes() == JPEG for i in range(5))
