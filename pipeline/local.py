"""In-process classification without a server: load a serving_server dir and classify images
synchronously with the same preprocessing, engine and top-k code the server uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnest_serving.pipeline.engines import candidates, open_runtime
from resnest_serving.pipeline.pixels import is_pixels
from resnest_serving.pipeline.postprocess import Postprocessor, top_k
from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image."""

    class_ids: list[int]
    scores: list[float]
    labels: list[str]


class LocalClassifier:
    """A bundle plus one engine instance in this process (chosen and warmed up as the server does, but
    without a worker process); not thread-safe."""

    def __init__(self, model_dir: str | Path, engine: str = "auto", options: EngineOptions | None = None,
                 label_file: str | Path | None = None, max_batch: int = 8):
        self.bundle = ModelBundle.load(model_dir, label_file)
        meta = self.bundle.meta
        self.preprocessor = Preprocessor(PreprocessSpec(meta.resize_short, meta.crop_size, meta.mean, meta.std))
        self.max_batch = max_batch
        self.engine, self.report = open_runtime(self.bundle, candidates(engine), options or EngineOptions(),
                                                max_batch)

    def preprocess_bytes(self, key: str, data: bytes) -> np.ndarray:
        """Encoded image bytes → the model's CHW float32 input (the server's decode + preprocessing)."""
        return self.preprocessor.from_bytes(key, data)

    def pixels_bytes(self, key: str, data: bytes) -> np.ndarray:
        """Encoded image bytes → the cropped uint8 RGB pixels the server hands its engines."""
        return self.preprocessor.pixels_from_bytes(key, data)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Model output for a batch of any size, uint8 pixels [N, H, W, 3] or float tensors [N, 3, H, W] (run in
        chunks of max_batch, the sizes warmed up)."""
        batch = np.ascontiguousarray(batch if is_pixels(batch) else batch.astype(np.float32, copy=False))
        return np.concatenate([self.engine.infer(batch[i:i + self.max_batch])
                               for i in range(0, batch.shape[0], self.max_batch)])

    def classify_files(self, paths: list[str | Path], k: int = 5) -> list[Prediction]:
        return self.classify_bytes([Path(p).read_bytes() for p in paths], k, [str(p) for p in paths])

    def classify_bytes(self, images: list[bytes], k: int = 5, names: list[str] | None = None,
                       batch: int = 8) -> list[Prediction]:
        names = names or [f"image_{i}" for i in range(len(images))]
        out: list[Prediction] = []
        for i in range(0, len(images), batch):
            inputs = np.stack([self.pixels_bytes(n, d) for n, d in zip(names[i:i + batch], images[i:i + batch],
                                                                          strict=True)])
            out += self.predictions(self.probabilities(inputs), k)
        return out

    def predictions(self, probs: np.ndarray, k: int) -> list[Prediction]:
        result = top_k(probs, k)
        names = Postprocessor(self.bundle.labels)
        return [Prediction(ids, scores, [names.label(i) for i in ids])
                for ids, scores in zip(result.class_ids, result.scores, strict=True)]
