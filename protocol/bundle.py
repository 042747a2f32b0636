"""A served model on disk (the bundle): a Paddle Serving `serving_server/` dir (ours, or one made by Paddle
Serving's own `convert`), with its model files, feed/fetch config, preprocessing sizes and labels.

`export/` writes it, `pipeline/` and `serving/` read it. Three model file layouts load: Paddle 3 (`*.json` +
`*.pdiparams`, what we export), legacy (`*.pdmodel` + `*.pdiparams`, as in PaddleClas's released
`*_infer.tar`), and the old `__model__` + `__params__`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resnest_serving.protocol.bundle_meta import BundleMeta, resize_short_for_crop
from resnest_serving.protocol.labels import load_labels
from resnest_serving.protocol.serving_config import read_config


def find_model_files(directory: Path) -> tuple[Path, Path]:
    """(model file, params file) of the inference model in `directory`, or a FileNotFoundError saying why."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    if (directory / "__model__").is_file() and (directory / "__params__").is_file():
        return directory / "__model__", directory / "__params__"
    params = sorted(directory.glob("*.pdiparams"))
    for suffix in (".json", ".pdmodel"):
        for model in sorted(directory.glob(f"*{suffix}")):
            twin = model.with_suffix(".pdiparams")
            if twin.is_file():
                return model, twin
    found = sorted(p.name for p in directory.iterdir())
    hint = "no .pdiparams file" if not params else "no .json or .pdmodel file next to the .pdiparams"
    raise FileNotFoundError(f"{directory}: no Paddle inference model ({hint}); found {found[:10]}")


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
