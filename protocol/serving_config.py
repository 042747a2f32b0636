"""Paddle Serving model config files: `serving_{server,client}_conf.prototxt` (protobuf text of
GeneralModelConfig) and their `.stream.prototxt` twins (the same message, binary), written exactly as
Paddle Serving's `convert` writes them, and read back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from resnest_serving.protocol.general_model_config_pb2 import GeneralModelConfig

SERVER_CONF = "serving_server_conf.prototxt"
SERVER_STREAM = "serving_server_conf.stream.prototxt"
CLIENT_CONF = "serving_client_conf.prototxt"
CLIENT_STREAM = "serving_client_conf.stream.prototxt"


@dataclass(frozen=True)
class VarSpec:
    """One feed or fetch variable: real name, alias, element type code and shape without the batch dim."""

    name: str
    alias: str
    type_code: int
    shape: tuple[int, ...]
    is_lod_tensor: bool = False


def build_config(feeds: list[VarSpec], fetches: list[VarSpec]) -> GeneralModelConfig:
    """GeneralModelConfig as convert builds it: negative dims (the batch -1) dropped from shapes."""
    config = GeneralModelConfig()
    for spec in feeds:
        var = config.feed_var.add(name=spec.name, alias_name=spec.alias, is_lod_tensor=spec.is_lod_tensor,
                                  feed_type=spec.type_code)
        var.shape.extend([-1] if spec.is_lod_tensor else [d for d in spec.shape if d >= 0])
    for spec in fetches:
        var = config.fetch_var.add(name=spec.name, alias_name=spec.alias, is_lod_tensor=spec.is_lod_tensor,
                                   fetch_type=spec.type_code)
        var.shape.extend([-1] if spec.is_lod_tensor else [d for d in spec.shape if d >= 0])
    return config


def render_text(config: GeneralModelConfig) -> str:
    """The text rendering Paddle Serving writes: `str(GeneralModelConfig)` (2-space indent)."""
    return text_format.MessageToString(config)


def write_config_files(config: GeneralModelConfig, server_dir: Path, client_dir: Path) -> None:
    """Write the four prototxt files into the server and client directories."""
    text, binary = render_text(config), config.SerializeToString()
    server_dir.mkdir(parents=True, exist_ok=True)
    client_dir.mkdir(parents=True, exist_ok=True)
    (server_dir / SERVER_CONF).write_text(text)
    (server_dir / SERVER_STREAM).write_bytes(binary)
    (client_dir / CLIENT_CONF).write_text(text)
    (client_dir / CLIENT_STREAM).write_bytes(binary)


def read_config(path: Path) -> GeneralModelConfig:
    """Read a server or client config: a dir (the text file if present, else the binary stream file) or
    one `.prototxt` file (`.stream.prototxt`: binary)."""
    if path.is_file():
        return _parse_config_file(path)
    for text_name, stream_name in ((SERVER_CONF, SERVER_STREAM), (CLIENT_CONF, CLIENT_STREAM)):
        for candidate in (path / text_name, path / stream_name):
            if candidate.is_file():
                return _parse_config_file(candidate)
    raise FileNotFoundError(f"{path}: no {SERVER_CONF} or {CLIENT_CONF} (is this a Paddle Serving dir?)")


def _parse_config_file(path: Path) -> GeneralModelConfig:
    config = GeneralModelConfig()
    if path.name.endswith(".stream.prototxt"):
        try:
            config.ParseFromString(path.read_bytes())
        except Exception as exc:  # protobuf raises DecodeError subclasses
            raise ValueError(f"{path}: not a valid GeneralModelConfig binary: {exc}") from exc
        return config
    try:
        return text_format.Parse(path.read_text(), config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid GeneralModelConfig text: {exc}") from exc
