"""Normal output stays clean (issue 23): no Paddle import notices in a server's log, no "(no results)" beside
predict's errors, and `serve --help` names every protocol it serves."""

from __future__ import annotations

import socket

import pytest

from resnest_serving.cli import main
from support import ServerProcess, write_config


def test_paddle_engine_log_has_no_import_notices(tmp_path, tiny_model_dir, monkeypatch):
    """engine: paddle with 2 math threads (OMP_NUM_THREADS=2 in the worker, where Paddle prints its notice)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # importing Paddle in this process set it to 1
    config = write_config(tmp_path / "c.yml", tiny_model_dir, op={"engine": "paddle"}, lsc={"thread_num": 2})
    server = ServerProcess(config)
    try:
        assert "paddle fp32" in server.log
    finally:
        assert server.stop() == 0
    for notice in ("OMP_NUM_THREADS", "No ccache found", "Traceback"):
        assert notice not in server.log, server.log


def test_predict_errors_only_go_to_stderr(image_paths, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["predict", "--protocol", "http", "--endpoint", f"127.0.0.1:{port}", "--timeout", "5",
                 str(image_paths[0])]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and image_paths[0].name in captured.err


def test_serve_help_names_the_open_inference_protocol(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Open Inference Protocol" in text and "bRPC" in text
