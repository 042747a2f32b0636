"""A served model on disk: a Paddle Serving `serving_server/` dir (ours, or one made by Paddle Serving's
own `convert`), with its feed/fetch config, preprocessing sizes and labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resnest_serving.export.bundle_meta import BundleMeta, resize_short_for_crop
from resnest_serving.export.model_files import find_model_files
from resnest_serving.export.serving_config import read_config
from resnest_serving.pipeline.labels import load_labels


@dataclass(frozen=True)
class ModelBundle:
    """Everything the pipeline needs to know about one exported model."""

    directory: Path
    model_file: Path
    params_file: Path
    feed_name: str
    feed_alias: str
    fetch_name: str
    fetch_alias: str
    meta: BundleMeta
    labels: tuple[str, ...] | None

    @property
    def onnx_file(self) -> Path | None:
        return self.directory / self.meta.onnx_file if self.meta.onnx_file else None

    @property
    def int8_onnx_file(self) -> Path | None:
        return self.directory / self.meta.int8_onnx_file if self.meta.int8_onnx_file else None

    @classmethod
    def load(cls, directory: str | Path, label_file: str | Path | None = None) -> ModelBundle:
        """Read a serving_server dir; `label_file` overrides the one recorded in the bundle."""
        directory = Path(directory).resolve()
        model_file, params_file = find_model_files(directory)
        config = read_config(directory)
        if len(config.feed_var) != 1 or len(config.fetch_var) != 1:
            raise ValueError(f"{directory}: expected one feed and one fetch var (an image classifier), got "
                             f"{len(config.feed_var)} feeds and {len(config.fetch_var)} fetches")
        feed, fetch = config.feed_var[0], config.fetch_var[0]
        meta = BundleMeta.read(directory)
        if meta is None:  # a foreign Paddle Serving dir: sizes from the feed shape, PaddleClas defaults
            crop = feed.shape[-1] if len(feed.shape) == 3 else 224
            meta = BundleMeta(crop_size=crop, resize_short=resize_short_for_crop(crop),
                              class_num=fetch.shape[-1] if fetch.shape else 1000)
        if label_file is None and meta.label_file:
            label_file = directory / meta.label_file
        labels = load_labels(Path(label_file)) if label_file else None
        return cls(directory, model_file, params_file, feed.name, feed.alias_name, fetch.name,
                   fetch.alias_name, meta, labels)
