"""Versions in a real server (issue #21): a versioned model_config polled every 0.5 s, real exports, real
engines. A new version dropped in under load from 4 closed-loop clients (2 gRPC, 2 REST) is switched to with
no failed request, every answer from exactly one version; a broken version is refused with one ERROR line
while the served one keeps answering; 20 new-version cycles leak no memory, engine worker or shared memory."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests

from resnest_serving.protocol import grpc_predict_v2_pb2 as v2
from resnest_serving.protocol import grpc_predict_v2_pb2_grpc as v2_grpc
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from support import serving, write_config

POLL_S = 0.5


@pytest.fixture(scope="module")
def second_export(tmp_path_factory, label_file):
    """Another ResNeSt_tiny (other random weights, same classes): its answers differ from the first's."""
    from resnest_serving.export.exporter import ExportOptions, export

    out = tmp_path_factory.mktemp("second") / "bundle"
    return export(ExportOptions(arch="ResNeSt_tiny", out=out, random_init=True, seed=3, label_file=label_file)).server_dir


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_model_dir) -> Path:
    """The versioned model_config, version 1 in it."""
    model = tmp_path_factory.mktemp("repo") / "imagenet"
    shutil.copytree(tiny_model_dir, model / "1")
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory, folder):
    config = write_config(tmp_path_factory.mktemp("cfg") / "config.yml", folder, {"batch_size": 1},
                          {"model_repository_poll_s": POLL_S})
    with serving(config) as server:
        yield server


@pytest.fixture(scope="module")
def body(image_paths) -> dict:
    return {"key": ["image"], "value": [base64.b64encode(image_paths[0].read_bytes()).decode()]}


def answer_of(keys, values) -> tuple[str, str]:
    """(version, label and prob) of a versioned model's answer."""
    found = dict(zip(keys, values, strict=True))
    return found["model_version"], f"{found['label']} {found['prob']}"


def grpc_client(server, body: dict, answers: list, stop: threading.Event) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        stub = pb_grpc.PipelineServiceStub(channel)
        while not stop.is_set():
            reply = stub.inference(pb.Request(key=body["key"], value=body["value"], name="imagenet"), timeout=60)
            answers.append((reply.err_no, reply.err_msg) + (answer_of(reply.key, reply.value) if not reply.err_no else ()))


def rest_client(server, body: dict, answers: list, stop: threading.Event) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            reply = session.post(server.url("/imagenet/prediction"), data=json.dumps(body), timeout=60).json()
            answers.append((reply["err_no"], reply["err_msg"]) +
                           (answer_of(reply["key"], reply["value"]) if not reply["err_no"] else ()))


def served_versions(server) -> list[str]:
    return requests.get(server.url("/v2/models/imagenet"), timeout=10).json()["versions"]


def wait_for(predicate, what: str, server, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; server log:\n{server.log[-4000:]}")


def ask(server, body: dict) -> tuple[str, str]:
    reply = requests.post(server.url("/imagenet/prediction"), data=json.dumps(body), timeout=60).json()
    assert reply["err_no"] == 0, reply
    return answer_of(reply["key"], reply["value"])


def drop_in(folder: Path, number: int, source: Path, corrupt: bool = False) -> None:
    """Copy `source` into folder/<number> the tidy way (a hidden folder, then a rename), its weights first
    overwritten with garbage when `corrupt`."""
    hidden = folder / f".{number}.tmp"
    shutil.copytree(source, hidden)
    if corrupt:
        for weights in (*hidden.glob("*.pdiparams"), *hidden.glob("*.onnx")):
            weights.write_bytes(bytes(range(256)) * 20)  # binary garbage, as real corruption is
    hidden.rename(folder / str(number))


def test_new_version_under_load_switches_with_no_failed_request(server, folder, body, second_export):
    current = int(served_versions(server)[-1])
    before = ask(server, body)
    stop = threading.Event()
    answers: list[list] = [[] for _ in range(4)]
    clients = [threading.Thread(target=grpc_client if i < 2 else rest_client, args=(server, body, answers[i], stop))
               for i in range(4)]
    for client in clients:
        client.start()
    try:
        wait_for(lambda: all(len(a) >= 3 for a in answers), "answers from every client", server)
        drop_in(folder, current + 1, second_export)
        wait_for(lambda: all(a and a[-1][2:3] == (str(current + 1),) for a in answers),
                 "every client answered by the new version", server)
        time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join(60)
    failed = [a for client in answers for a in client if a[0] != 0]
    assert not failed, failed[:5]
    by_version: dict[str, set[str]] = {}
    for client in answers:
        versions = [a[2] for a in client]
        switch = versions.index(str(current + 1))
        assert switch > 0 and set(versions[:switch]) == {str(current)} and set(versions[switch:]) == {str(current + 1)}
        for _err_no, _msg, version, answer in client:
            by_version.setdefault(version, set()).add(answer)
    # every answer is exactly one version's: one answer per version, and the two versions answer differently
    assert by_version[str(current)] == {before[1]} and len(by_version[str(current + 1)]) == 1
    assert by_version[str(current)] != by_version[str(current + 1)]
    assert served_versions(server) == [str(current + 1)]
    image = base64.b64decode(body["value"][0])
    request = v2.ModelInferRequest(model_name="imagenet", inputs=[
        v2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1, 1])],
        raw_input_contents=[struct.pack("<I", len(image)) + image])
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        assert v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60).model_version == str(current + 1)
    log = server.log
    assert f"model imagenet: serving version(s) {current + 1}; draining {current}" in log
    wait_for(lambda: f"model imagenet: version {current} stopped" in server.log, "the old version stopped", server)


def test_broken_version_is_refused_once_while_the_served_one_answers(server, folder, body, second_export):
    current = int(served_versions(server)[-1])
    served_answer = ask(server, body)
    broken = current + 1
    drop_in(folder, broken, second_export, corrupt=True)
    line = f"model imagenet: version {broken}: "
    wait_for(lambda: line in server.log and "not switched to it" in server.log, "the refusal", server)
    time.sleep(4 * POLL_S)  # more polls: the refused version is not tried again
    errors = [entry for entry in server.log.splitlines() if " ERROR " in entry]
    assert len([e for e in errors if line in e]) == 1, errors
    assert f"not switched to it (serving {current})" in errors[-1]
    assert ask(server, body) == served_answer and served_versions(server) == [str(current)]
    index = requests.post(server.url("/v2/repository/index"), timeout=10).json()
    assert [(e["version"], e["state"]) for e in index] == [(str(current), "READY"), (str(broken), "UNAVAILABLE")]
    assert index[1]["reason"].startswith(f"version {broken}: ")
    shutil.rmtree(folder / str(broken))
    wait_for(lambda: len(requests.post(server.url("/v2/repository/index"), timeout=10).json()) == 1,
             "the broken version gone from the index", server)


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def shm_segments() -> set[str]:
    return {entry.name for entry in Path("/dev/shm").iterdir()}


def mapped_shm() -> set[str]:
    """/dev/shm entries mapped by any process we can read (a leaked segment is mapped by none)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                found |= {line.split("/dev/shm/", 1)[1].split()[0] for line in (proc / "maps").read_text().splitlines()
                          if "/dev/shm/" in line}
            except OSError:
                continue
    return found


def test_twenty_new_versions_leak_nothing(server, folder, body, tiny_model_dir, second_export):
    pid = server.info["pid"]
    shm_before = shm_segments()
    samples = {}
    current = int(served_versions(server)[-1])
    for cycle in range(1, 21):
        new = current + 1
        drop_in(folder, new, second_export if new % 2 == 0 else tiny_model_dir)
        wait_for(lambda new=new: ask(server, body)[0] == str(new), f"version {new}", server)
        wait_for(lambda current=current: f"model imagenet: version {current} stopped" in server.log,
                 f"version {current} stopped", server)
        shutil.rmtree(folder / str(current))
        current = new
        if cycle in (1, 20):
            for _ in range(20):  # the same work after each sample
                ask(server, body)
            pids = tree(pid)
            samples[cycle] = (rss_kib(pids), len(pids))
    first, last = samples[1], samples[20]
    print(f"server tree after cycle 1: {first[0]} KiB in {first[1]} processes; after cycle 20: {last[0]} KiB in "
          f"{last[1]} processes")
    assert last[1] == first[1], f"processes in the server's tree: {first[1]} after the first cycle, {last[1]} after the 20th"
    assert last[0] <= first[0] * 1.10, f"RSS of the server's tree: {first[0]} KiB after the first cycle, {last[0]} KiB after the 20th"
    leaked = (shm_segments() - shm_before) - mapped_shm()
    assert not leaked, f"shared memory left behind: {sorted(leaked)}"
