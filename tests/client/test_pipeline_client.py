"""PipelineClient against the real gRPC front door, the way Paddle Serving scripts use it."""

from __future__ import annotations

import ast
import base64
import subprocess
import sys

from resnest_serving.client import PipelineClient

# PaddleClas deploy/paddleserving/pipeline_rpc_client.py, with only the import changed.
SCRIPT = '''
from resnest_serving.client import PipelineClient  # was: from paddle_serving_server.pipeline import PipelineClient
import base64

client = PipelineClient()
client.connect(['127.0.0.1:{port}'])


def cv2_to_base64(image):
    return base64.b64encode(image).decode('utf8')


if __name__ == "__main__":
    with open("{image}", 'rb') as file:
        image_data = file.read()
    image = cv2_to_base64(image_data)

    for i in range(1):
        ret = client.predict(feed_dict={{"image": image}}, fetch=["label", "prob"])
        print(ret)
'''


def test_unchanged_paddleclas_script(top1_server, image_paths, tmp_path):
    script = tmp_path / "pipeline_rpc_client.py"
    script.write_text(SCRIPT.format(port=top1_server.ports["grpc"], image=image_paths[-1]))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin"})  # the installed package, from the user's folder
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('key: "label"\nkey: "prob"\nvalue: "[\\\'')  # text-format Response, err_no 0
    assert "PipelineClient::predict" not in out.stdout  # Paddle's timing prints are gone


def test_predict_sync_async_profile(topk_server, image_paths):
    client = PipelineClient()
    client.connect([f"127.0.0.1:{topk_server.ports['grpc']}"])
    feed = {f"image_{i}": base64.b64encode(p.read_bytes()).decode() for i, p in enumerate(image_paths[:2])}
    resp = client.predict(feed_dict=feed, fetch=["label", "prob"], log_id=1234)
    assert resp.err_no == 0 and list(resp.key)[:2] == ["label", "prob"]
    values = dict(zip(resp.key, resp.value, strict=True))
    assert len(ast.literal_eval(values["label"])) == 2 and len(ast.literal_eval(values["class_ids"])) == 2

    future = client.predict(feed_dict=feed, asyn=True, profile=True)
    async_resp = future.result(timeout=30)
    assert async_resp.err_no == 0 and "pipeline.profile" in async_resp.key
    assert list(async_resp.value)[:2] == list(resp.value)[:2]

    bad = client.predict(feed_dict={"image": "not base64 at all!"})
    assert bad.err_no == 5000 and bad.err_msg  # application errors come back in the Response, not raised
    client.close()
