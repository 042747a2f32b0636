"""baidu_std framing, compression and errors, checked against bytes written by hand from the spec."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from resnest_serving.protocol import baidu_std as bs
from resnest_serving.protocol.brpc_meta_pb2 import RpcMeta

SERVICE = "baidu.paddle_serving.predictor.general_model.GeneralModelService"


def _len_field(tag: int, data: bytes) -> bytes:
    assert len(data) < 128  # one-byte length varint keeps the hand encoding obvious
    return bytes([tag, len(data)]) + data


def test_request_frame_is_byte_exact() -> None:
    # RpcMeta{request{service_name, method_name}, correlation_id=7}: field 1 (LEN, tag 0x0a) holding
    # service_name (1, 0x0a) and method_name (2, 0x12); correlation_id is field 4 varint (tag 0x20).
    request_meta = _len_field(0x0A, SERVICE.encode()) + _len_field(0x12, b"inference")
    meta = _len_field(0x0A, request_meta) + b"\x20\x07"
    payload = b"\x0a\x03abc"
    expected = b"PRPC" + struct.pack(">II", len(meta) + len(payload), len(meta)) + meta + payload

    assert bs.encode_request(SERVICE, "inference", payload, correlation_id=7) == expected


def test_request_frame_with_log_id_compression_and_attachment_is_byte_exact() -> None:
    # log_id is RpcRequestMeta field 3 (0x18); compress_type is RpcMeta field 3 (0x18),
    # attachment_size field 5 (0x28).
    request_meta = _len_field(0x0A, b"S") + _len_field(0x12, b"m") + b"\x18\x2a"
    payload = gzip.compress(b"data", compresslevel=6, mtime=0)  # level 6 (zlib's default), no timestamp
    meta = _len_field(0x0A, request_meta) + b"\x18\x02" + b"\x20\x01" + b"\x28\x03"
    body = meta + payload + b"att"
    expected = b"PRPC" + struct.pack(">II", len(body), len(meta)) + body

    frame = bs.encode_request("S", "m", b"data", correlation_id=1, log_id=42,
                              compress_type=bs.CompressType.GZIP, attachment=b"att")
    assert frame == expected


def test_error_response_frame_is_byte_exact() -> None:
    # RpcMeta{response{error_code=1001, error_text="x"}, correlation_id=300}; 1001 = varint e9 07,
    # 300 = varint ac 02. No payload, no compress_type.
    response_meta = b"\x08\xe9\x07" + _len_field(0x12, b"x")
    meta = _len_field(0x12, response_meta) + b"\x20\xac\x02"
    expected = b"PRPC" + struct.pack(">II", len(meta), len(meta)) + meta

    assert bs.encode_response(300, b"ignored", error_code=1001, error_text="x") == expected


def test_ok_response_always_sets_error_code_but_not_error_text() -> None:
    frame = bs.decode_frame(bs.encode_response(5, b"out", compress_type=bs.CompressType.ZLIB))
    assert frame.meta.response.HasField("error_code") and frame.meta.response.error_code == 0
    assert not frame.meta.response.HasField("error_text")
    assert frame.meta.compress_type == 3 and frame.meta.correlation_id == 5
    assert zlib.decompress(frame.payload) == b"out"


def test_decode_round_trip_with_attachment() -> None:
    data = bs.encode_request("a.B", "c", b"payload", correlation_id=2**40, log_id=9, attachment=b"tail")
    frame = bs.decode_frame(data)
    assert frame.meta.request.service_name == "a.B" and frame.meta.request.method_name == "c"
    assert frame.meta.request.log_id == 9 and frame.meta.correlation_id == 2**40
    assert (frame.payload, frame.attachment) == (b"payload", b"tail")


def _frames(n: int) -> list[bytes]:
    return [bs.encode_request("s.S", f"m{i}", bytes([i]) * (i * 37), correlation_id=i + 1,
                              attachment=b"a" * (i % 3)) for i in range(n)]


def test_parser_fed_one_byte_at_a_time() -> None:
    frames = _frames(3)
    parser = bs.FrameParser()
    got = []
    for byte in b"".join(frames):
        got += parser.feed(bytes([byte]))
    assert [f.meta.correlation_id for f in got] == [1, 2, 3]
    assert [f.payload for f in got] == [bytes([i]) * (i * 37) for i in range(3)]
    assert [f.attachment for f in got] == [b"", b"a", b"aa"]
    assert parser.buffered == 0


def test_parser_several_frames_in_one_chunk_and_split_across_chunks() -> None:
    data = b"".join(_frames(5))
    parser = bs.FrameParser()
    first = parser.feed(data[:-10])  # four whole frames and most of the fifth
    assert [f.meta.correlation_id for f in first] == [1, 2, 3, 4]
    assert parser.buffered > 0
    rest = parser.feed(data[-10:])
    assert [f.meta.correlation_id for f in rest] == [5]
    assert parser.feed(b"") == []


@pytest.mark.parametrize("ctype", [bs.CompressType.NONE, bs.CompressType.GZIP, bs.CompressType.ZLIB])
def test_compression_round_trip(ctype: bs.CompressType) -> None:
    data = b"resnest " * 1000
    packed = bs.compress(data, ctype)
    assert bs.decompress(packed, ctype) == data
    if ctype == bs.CompressType.GZIP:
        assert packed[:2] == b"\x1f\x8b" and gzip.decompress(packed) == data
    if ctype == bs.CompressType.ZLIB:
        assert zlib.decompress(packed) == data
    frame = bs.decode_frame(bs.encode_request("s.S", "m", data, correlation_id=1, compress_type=ctype))
    assert frame.meta.compress_type == ctype
    assert bs.decompress(frame.payload, frame.meta.compress_type) == data


@pytest.mark.parametrize("ctype", [bs.CompressType.SNAPPY, bs.CompressType.LZ4, 9])
def test_snappy_and_lz4_are_refused(ctype: int) -> None:
    for func in (bs.compress, bs.decompress):
        with pytest.raises(bs.BrpcError) as err:
            func(b"x", ctype)
        assert err.value.code == bs.Errno.EREQUEST == 1003
        assert "unsupported compress_type" in err.value.text


def test_corrupt_compressed_payload_is_erequest() -> None:
    for ctype in (bs.CompressType.GZIP, bs.CompressType.ZLIB):
        with pytest.raises(bs.BrpcError) as err:
            bs.decompress(b"definitely not compressed", ctype)
        assert err.value.code == bs.Errno.EREQUEST


def test_bad_magic() -> None:
    parser = bs.FrameParser()
    with pytest.raises(bs.BadMagicError):
        parser.feed(b"HTTP" + struct.pack(">II", 10, 2))
    with pytest.raises(bs.BadMagicError):  # a broken parser stays broken
        parser.feed(bs.encode_request("s.S", "m", b"", correlation_id=1))


def test_meta_size_bigger_than_body_size_is_refused_from_the_header() -> None:
    with pytest.raises(bs.MetaSizeError):
        bs.FrameParser().feed(b"PRPC" + struct.pack(">II", 4, 5))


def test_body_too_large_is_refused_from_the_header_alone() -> None:
    parser = bs.FrameParser(max_body_size=100)
    with pytest.raises(bs.FrameTooLargeError) as err:
        parser.feed(b"PRPC" + struct.pack(">II", 101, 10))  # no body bytes needed to decide
    assert (err.value.body_size, err.value.meta_size, err.value.limit) == (101, 10, 100)
    assert err.value.code == bs.Errno.EREQUEST
    assert "max_body_size=100" in err.value.text
    ok = bs.FrameParser(max_body_size=100).feed(bs.encode_request("s.S", "m", b"x" * 50, correlation_id=1))
    assert len(ok) == 1


def test_attachment_size_bigger_than_rest_of_body() -> None:
    meta = RpcMeta(correlation_id=1, attachment_size=50)
    meta.request.service_name, meta.request.method_name = "s.S", "m"
    raw = meta.SerializeToString()
    data = b"PRPC" + struct.pack(">II", len(raw) + 4, len(raw)) + raw + b"abcd"
    with pytest.raises(bs.FrameError, match="attachment_size=50"):
        bs.decode_frame(data)


def test_corrupt_meta() -> None:
    data = b"PRPC" + struct.pack(">II", 3, 3) + b"\xff\xff\xff"
    with pytest.raises(bs.FrameError, match="RpcMeta"):
        bs.FrameParser().feed(data)


def test_brpc_error_and_errno_values() -> None:
    err = bs.BrpcError(bs.Errno.ERPCTIMEDOUT, "too slow")
    assert (err.code, err.text) == (1008, "too slow")
    assert "ERPCTIMEDOUT" in str(err) and "too slow" in str(err)
    assert str(bs.BrpcError(-5000, "Paddle Serving Framework Internal Error.")).startswith("[error -5000]")
    expected = {"ENOSERVICE": 1001, "ENOMETHOD": 1002, "EREQUEST": 1003, "ERPCTIMEDOUT": 1008,
                "EFAILEDSOCKET": 1009, "EOVERCROWDED": 1011, "EEOF": 1014, "EINTERNAL": 2001,
                "ERESPONSE": 2002, "ELOGOFF": 2003, "ELIMIT": 2004, "ECLOSE": 2005}
    assert {name: int(bs.Errno[name]) for name in expected} == expected


def test_short_service_name() -> None:
    assert bs.short_service_name(SERVICE) == "GeneralModelService"
    assert bs.short_service_name("PipelineService") == "PipelineService"
