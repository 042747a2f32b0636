"""Runs under the tritonclient environment (RESNEST_TRITON_PYTHON, built by `make venv-test`), never under
the project's own: tritonclient pins protobuf < 7. Reads a JSON list of calls from the file named by
argv[1], makes each with the unchanged tritonclient (http, http.aio, grpc, grpc.aio), and prints one JSON
object {call id: result}. A result is {"value": ...} or {"error": {"status", "message"}}.

Calls: {"id", "op", "transport": "http"|"http-aio"|"grpc"|"grpc-aio", ...}, op one of live, ready,
model_ready, server_metadata, model_metadata, model_config, infer (inputs: [{"name", "datatype", "shape",
"npy" | "files" | "strings"}], "binary", "outputs": [{"name", "class_count"}], "parameters"),
repository_index, load_model, unload_model (model repository extension; sync only), descriptor (the field
numbers of tritonclient's own generated messages). Sync calls send the call's "headers" (e.g. a token).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np


def _input(module, spec: dict, binary: bool):
    tensor = module.InferInput(spec["name"], spec["shape"], spec["datatype"])
    if "npy" in spec:
        data = np.load(spec["npy"], allow_pickle=False)
    elif "files" in spec:
        data = np.array([Path(p).read_bytes() for p in spec["files"]], dtype=np.object_).reshape(spec["shape"])
    else:
        data = np.array([s.encode() for s in spec["strings"]], dtype=np.object_).reshape(spec["shape"])
    if ".grpc" in module.__name__:
        tensor.set_data_from_numpy(data)
    else:
        tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def _outputs(module, call: dict):
    outs = []
    for spec in call.get("outputs", []):
        kwargs = {"class_count": spec.get("class_count", 0)}
        if ".grpc" not in module.__name__:
            kwargs["binary_data"] = call.get("binary", True)
        outs.append(module.InferRequestedOutput(spec["name"], **kwargs))
    return outs or None


def _result(result, call: dict) -> dict:
    names = [o["name"] for o in call.get("outputs", [])] or [call.get("output", "prediction")]
    out = {}
    for name in names:
        array = result.as_numpy(name)
        if array is None:
            out[name] = None
        elif array.dtype == np.object_:
            out[name] = {"shape": list(array.shape), "data": [x.decode() if isinstance(x, bytes) else x
                                                              for x in array.reshape(-1)]}
        else:
            out[name] = {"shape": list(array.shape), "dtype": str(array.dtype), "data": array.reshape(-1).tolist()}
    return out


def _sync(call: dict, url: str):
    transport = call["transport"]
    if transport == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    client = module.InferenceServerClient(url)
    op = call["op"]
    model = call.get("model", "imagenet")
    headers = call.get("headers")
    if op == "repository_index":
        return _plain(client.get_model_repository_index(headers=headers,
                                                        **({} if transport == "http" else {"as_json": True})))
    if op in ("load_model", "unload_model"):
        getattr(client, op)(model, headers=headers)
        return None
    if op == "live":
        return client.is_server_live()
    if op == "ready":
        return client.is_server_ready()
    if op == "model_ready":
        return client.is_model_ready(model, call.get("version", ""))
    if op == "server_metadata":
        return _plain(client.get_server_metadata(**({} if transport == "http" else {"as_json": True})))
    if op == "model_metadata":
        return _plain(client.get_model_metadata(model, call.get("version", ""),
                                                **({} if transport == "http" else {"as_json": True})))
    if op == "model_config":
        return _plain(client.get_model_config(model, **({} if transport == "http" else {"as_json": True})))
    if op == "infer":
        inputs = [_input(module, spec, call.get("binary", True)) for spec in call["inputs"]]
        kwargs = {"parameters": call["parameters"]} if call.get("parameters") else {}
        result = client.infer(model, inputs, outputs=_outputs(module, call), request_id=call.get("request_id", ""),
                              model_version=call.get("version", ""), headers=headers, **kwargs)
        return _result(result, call)
    raise ValueError(f"unknown op {op!r}")


async def _async(call: dict, url: str):
    if call["transport"] == "http-aio":
        import tritonclient.http.aio as module
    else:
        import tritonclient.grpc.aio as module
    client = module.InferenceServerClient(url)
    try:
        if call["op"] == "live":
            return await client.is_server_live()
        if call["op"] == "infer":
            inputs = [_input(module, spec, call.get("binary", True)) for spec in call["inputs"]]
            result = await client.infer(call.get("model", "imagenet"), inputs, outputs=_outputs(module, call))
            return _result(result, call)
        raise ValueError(f"unknown async op {call['op']!r}")
    finally:
        await client.close()


def _plain(value):
    return json.loads(json.dumps(value))


def _descriptor() -> dict:
    from tritonclient.grpc import model_config_pb2, service_pb2

    def fields(descriptor, prefix=""):
        out = {}
        for field in descriptor.fields:
            out[f"{prefix}{descriptor.name}.{field.name}"] = [field.number, field.type]
        for nested in descriptor.nested_types:
            if not nested.GetOptions().map_entry:
                out.update(fields(nested, f"{prefix}{descriptor.name}."))
        return out

    out = {}
    for message in service_pb2.DESCRIPTOR.message_types_by_name.values():
        out.update(fields(message))
    for name in ("ModelConfig", "ModelInput", "ModelOutput"):
        out.update(fields(model_config_pb2.DESCRIPTOR.message_types_by_name[name]))
    methods = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    out["methods"] = {m.name: [m.input_type.name, m.output_type.name] for m in methods}
    return out


def main() -> int:
    calls = json.loads(Path(sys.argv[1]).read_text())
    from tritonclient.utils import InferenceServerException

    results = {}
    for call in calls:
        url = call.get("url", "")
        try:
            if call["op"] == "descriptor":
                value = _descriptor()
            elif call["transport"].endswith("-aio"):
                value = asyncio.run(_async(call, url))
            else:
                value = _sync(call, url)
            results[call["id"]] = {"value": value}
        except InferenceServerException as exc:
            results[call["id"]] = {"error": {"status": str(exc.status()), "message": exc.message()}}
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
