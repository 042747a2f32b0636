"""The committed protobuf/gRPC stubs are what `make proto` generates from the committed .proto files,
and the messages carry Paddle Serving's exact package, names and field numbers."""

from __future__ import annotations

from pathlib import Path

from resnest_serving.protocol import generate
from resnest_serving.protocol import pipeline_service_pb2 as pb


def test_committed_stubs_are_fresh(tmp_path):
    for path in generate.generate(tmp_path):
        committed = generate.PROTOCOL_DIR / path.name
        assert committed.is_file(), f"{path.name} is not committed: run `make proto`"
        assert committed.read_bytes() == path.read_bytes(), f"{path.name} is stale: run `make proto`"


def test_pipeline_wire_contract():
    assert pb.DESCRIPTOR.services_by_name["PipelineService"].full_name == \
        "baidu.paddle_serving.pipeline_serving.PipelineService"
    numbers = {f.name: f.number for f in pb.Request.DESCRIPTOR.fields}
    assert numbers == {"key": 1, "value": 2, "tensors": 3, "name": 4, "method": 5, "logid": 6, "clientip": 7}
    numbers = {f.name: f.number for f in pb.Response.DESCRIPTOR.fields}
    assert numbers == {"err_no": 1, "err_msg": 2, "key": 3, "value": 4, "tensors": 5}
    request = pb.Request(key=["image"], value=["...b64..."], name="imagenet", method="prediction", logid=123)
    assert request.SerializeToString().hex() == (  # ../shared/reference/paddle_serving_protocol.md §1 example serialisation
        "0a05" + b"image".hex() + "1209" + b"...b64...".hex() + "2208" + b"imagenet".hex() + "2a0a"
        + b"prediction".hex() + "307b")


def test_every_proto_has_stubs():
    protos = sorted(p.name for p in Path(generate.PROTOCOL_DIR).glob("*.proto"))
    assert protos == sorted(generate.PROTOS)
