"""Run by Paddle Serving's interpreter (Python 3.9, paddle-serving-server 0.9): the PaddleClas ImageNet
classification pipeline as Paddle Serving users run it, for side-by-side benchmarks against our server.
Every request key is one base64 image; the op decodes it with OpenCV, resizes the short side, centre-crops,
BGR→RGB, CHW, /255, ImageNet mean/std (paddle_serving_app's transforms, as PaddleClas's example), runs the
model with the in-process Paddle Inference predictor (`client_type: local_predictor`) and answers the top-1
`label` and `prob` as `str(list)`, one entry per image. Labels: a PaddleClas `<id> <name>` list or one name
per line (commas removed, as PaddleClas's example does); without a label file, the class id.

    /work/ps39/bin/python bench/paddle_serving/web_service.py --model-dir BUNDLE/serving_server \
        [--resize-short 256 --crop-size 224] [--label-file F] [--rpc-port 9993 --http-port 18080]
"""

from __future__ import annotations

import argparse
import base64
import logging
from pathlib import Path

import cv2
import numpy as np
import yaml
from paddle_serving_app.reader import RGB2BGR, CenterCrop, Div, Normalize, Resize, Sequential, Transpose
from paddle_serving_server.web_service import Op, WebService

log = logging.getLogger("web_service")
HERE = Path(__file__).resolve().parent


def read_labels(path: Path | None) -> list[str] | None:
    """Class names by id from a label file in either layout; None without one."""
    if path is None:
        return None
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = [line.split(" ", 1) for line in lines]
    if all(len(p) == 2 and p[0].isdigit() for p in pairs):
        names = {int(i): name.strip() for i, name in pairs}
        return [names[i] for i in range(len(names))]
    return lines


class ImagenetOp(Op):
    """Decode + PaddleClas preprocessing, the local predictor, top-1 label/prob."""

    resize_short = 256
    crop_size = 224
    labels: list[str] | None = None

    def init_op(self):
        self.seq = Sequential([Resize(self.resize_short), CenterCrop(self.crop_size), RGB2BGR(),
                               Transpose((2, 0, 1)), Div(255),
                               Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], True)])

    def preprocess(self, input_dicts, data_id, log_id):
        (_, input_dict), = input_dicts.items()
        imgs = []
        for key in input_dict.keys():  # every key is one image, in request order
            data = np.frombuffer(base64.b64decode(input_dict[key].encode("utf8")), np.uint8)
            img = cv2.imdecode(data, cv2.IMREAD_COLOR)
            imgs.append(self.seq(img)[np.newaxis, :].copy())
        return {"x": np.concatenate(imgs, axis=0)}, False, None, ""

    def postprocess(self, input_dicts, fetch_dict, data_id, log_id):
        labels, probs = [], []
        for row in fetch_dict["prediction"].tolist():
            best = max(row)
            class_id = row.index(best)
            name = self.labels[class_id] if self.labels is not None else str(class_id)
            labels.append(name.replace(",", ""))
            probs.append(best)
        return {"label": str(labels), "prob": str(probs)}, None, ""


class ImageService(WebService):
    """One op named `imagenet` after the read op: served at /imagenet/prediction and over gRPC."""

    def get_pipeline_response(self, read_op):
        return ImagenetOp(name="imagenet", input_ops=[read_op])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=HERE / "config.yml")
    parser.add_argument("--model-dir", type=Path, required=True, help="a serving_server folder (.pdmodel)")
    parser.add_argument("--rpc-port", type=int)
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--thread-num", type=int, help="math threads of the predictor")
    parser.add_argument("--resize-short", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--label-file", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = yaml.safe_load(args.config.read_text())
    config["rpc_port"] = args.rpc_port or config["rpc_port"]
    config["http_port"] = args.http_port or config["http_port"]
    lsc = config["op"]["imagenet"]["local_service_conf"]
    lsc["model_config"] = str(args.model_dir.resolve())
    if args.thread_num:
        lsc["thread_num"] = args.thread_num
    ImagenetOp.resize_short, ImagenetOp.crop_size = args.resize_short, args.crop_size
    ImagenetOp.labels = read_labels(args.label_file)
    log.info("serving %s: gRPC %d, HTTP %d", args.model_dir, config["rpc_port"], config["http_port"])
    service = ImageService(name="imagenet")
    service.prepare_pipeline_config(yml_dict=config)
    service.run_service()


if __name__ == "__main__":
    main()
