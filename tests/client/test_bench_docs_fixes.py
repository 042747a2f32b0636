"""Small `resnest bench` / `bench.soak` behaviours the README promises (issue 23): the sweep's knee wording when
throughput still rises, TIFF folders, the metrics URL of our server, and a short soak's INCONCLUSIVE verdict."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from bench.soak import SoakReport
from resnest_serving.client.bench_cli import bench_images, sibling_metrics_url
from resnest_serving.client.bench_results import SweepReport
from resnest_serving.client.report import knee_line, still_rising


def sweep(*images_per_s: float) -> SweepReport:
    levels = [(2 ** i, SimpleNamespace(images_per_s=v)) for i, v in enumerate(images_per_s)]
    return SweepReport(levels, 0.95)


def test_knee_wording_when_throughput_still_rises():
    levelled = sweep(10.0, 20.0, 20.5, 20.4)
    assert levelled.knee == 2 and not still_rising(levelled)
    assert knee_line(levelled).startswith("knee (*): concurrency 2, the lowest level reaching 95%")
    rising = sweep(10.0, 15.0, 20.0, 30.0)
    assert rising.knee == 8 and still_rising(rising)
    assert "only where the sweep stopped" in knee_line(rising) and "try higher levels" in knee_line(rising)


def test_tiff_files_are_skipped_and_a_tiff_folder_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "b.tif").write_bytes(b"tif")
    (tmp_path / "c.TIFF").write_bytes(b"tif")
    assert [p.name for p in bench_images(tmp_path)] == ["a.png"]
    (tmp_path / "a.png").unlink()
    with pytest.raises(ValueError, match="only TIFF images, which the server refuses"):
        bench_images(tmp_path)


@pytest.mark.parametrize(("protocol", "endpoint", "url"), [
    ("grpc", "127.0.0.1:9993", "http://127.0.0.1:18080/metrics"),
    ("v2-grpc", "127.0.0.1:9993", "http://127.0.0.1:18080/metrics"),
    ("brpc", "127.0.0.1:9994", "http://127.0.0.1:18080/metrics"),
    ("grpc", "127.0.0.1:40000", None),  # not configs/config.yml's port: its REST port is unknown
    ("http", "127.0.0.1:18080", None),  # the endpoint itself serves /metrics (default_metrics_url)
])
def test_metrics_url_of_our_default_server(protocol, endpoint, url):
    assert sibling_metrics_url(protocol, endpoint, "http") == url


def test_short_soak_is_inconclusive_not_fail():
    report = SoakReport(duration_s=2.0, warmup_s=0.5, outcomes=Counter({("valid", "ok"): 10}),
                        samples=[(1.0, 100)])
    assert report.verdict == "INCONCLUSIVE" and not report.passed
    assert report.text().splitlines()[-1] == "soak: INCONCLUSIVE"
    report.outcomes[("valid", "unexpected")] += 1
    assert report.verdict == "FAIL" and report.text().splitlines()[-1] == "soak: FAIL"


def test_sweep_plot_starts_at_zero_and_names_protocol_and_endpoint(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from resnest_serving.client import report as report_module

    config = {"protocol": "brpc", "endpoint": "127.0.0.1:9994", "service_name": "imagenet"}
    levels = [(c, SimpleNamespace(images_per_s=v, config=config,
                                  figures=lambda: {"p50_ms": 10.0, "p99_ms": 20.0}))
              for c, v in ((1, 150.0), (2, 160.0), (4, 161.0))]
    saved = {}

    def keep(fig, plt, path):
        saved["axes"] = [(ax.get_ylim(), ax.get_title()) for ax in fig.axes]
        plt.close(fig)
        return path

    monkeypatch.setattr(report_module, "_save", keep)
    report_module.plot_sweep(SweepReport(levels, 0.95), tmp_path / "sweep.png")
    (throughput, title), (latency, _) = saved["axes"]
    assert throughput[0] == 0 and latency[0] == 0
    assert "brpc 127.0.0.1:9994" in title
