"""serving_*_conf.prototxt in Paddle Serving's exact text rendering and binary bytes (../shared/reference/paddle_serving_protocol.md §6)."""

from __future__ import annotations

import pytest

from resnest_serving.protocol.serving_config import (
    VarSpec,
    build_config,
    read_config,
    render_text,
    write_config_files,
)

REFERENCE_TEXT = """feed_var {
  name: "inputs"
  alias_name: "inputs"
  is_lod_tensor: false
  feed_type: 1
  shape: 3
  shape: 224
  shape: 224
}
fetch_var {
  name: "save_infer_model/scale_0.tmp_1"
  alias_name: "save_infer_model/scale_0.tmp_1"
  is_lod_tensor: false
  fetch_type: 1
  shape: 1000
}
"""
REFERENCE_HEX = (
    "0a1c0a06696e707574731206696e7075747318002001280328e00128e00112470a1e736176655f696e6665725f6d6f64656c2f"
    "7363616c655f302e746d705f31121e736176655f696e6665725f6d6f64656c2f7363616c655f302e746d705f311800200128e807"
)


def reference_config():
    fetch = "save_infer_model/scale_0.tmp_1"
    return build_config([VarSpec("inputs", "inputs", 1, (-1, 3, 224, 224))], [VarSpec(fetch, fetch, 1, (-1, 1000))])


def test_text_and_bytes_match_paddle_serving():
    config = reference_config()
    assert render_text(config) == REFERENCE_TEXT
    assert config.SerializeToString().hex() == REFERENCE_HEX


def test_write_and_read_back(tmp_path):
    write_config_files(reference_config(), tmp_path / "server", tmp_path / "client")
    assert (tmp_path / "server" / "serving_server_conf.prototxt").read_text() == REFERENCE_TEXT
    assert (tmp_path / "client" / "serving_client_conf.prototxt").read_text() == REFERENCE_TEXT
    assert (tmp_path / "server" / "serving_server_conf.stream.prototxt").read_bytes().hex() == REFERENCE_HEX
    assert (tmp_path / "client" / "serving_client_conf.stream.prototxt").read_bytes().hex() == REFERENCE_HEX
    assert read_config(tmp_path / "server") == reference_config()
    (tmp_path / "server" / "serving_server_conf.prototxt").unlink()  # falls back to the binary twin
    assert read_config(tmp_path / "server") == reference_config()


def test_bad_config_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no serving_server_conf.prototxt"):
        read_config(tmp_path)
    (tmp_path / "serving_server_conf.prototxt").write_text("feed_var { nme: 1 }")
    with pytest.raises(ValueError, match="not a valid GeneralModelConfig text"):
        read_config(tmp_path)
