"""Top-k formatting as PaddleClas clients expect; labels files in both formats."""

from __future__ import annotations

import ast

import numpy as np
import pytest

from resnest_serving.pipeline.postprocess import Postprocessor, top_k
from resnest_serving.protocol.labels import load_labels


def test_top1_paddleclas_shape():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    out = Postprocessor(("tench, Tinca tinca", "goldfish", "shark"), topk=1)(probs)
    assert list(out) == ["label", "prob"]
    assert ast.literal_eval(out["label"]) == ["goldfish", "tench Tinca tinca"]  # commas removed, as PaddleClas
    assert ast.literal_eval(out["prob"]) == [float(np.float32(0.7)), 0.5]


def test_topk_keys():
    probs = np.array([[0.1, 0.7, 0.2]], np.float32)
    out = Postprocessor(("a", "b", "c"), topk=2)(probs)
    assert ast.literal_eval(out["class_ids"]) == [[1, 2]]
    assert ast.literal_eval(out["scores"]) == [[0.7, 0.2]]
    assert ast.literal_eval(out["label_names"]) == [["b", "c"]]


def test_topk_larger_than_classes_and_no_labels():
    result = top_k(np.array([[0.3, 0.3, 0.4]]), 5)
    assert result.class_ids == [[2, 0, 1]]  # ties: lower id first
    out = Postprocessor(None, topk=1)(np.array([[0.3, 0.7]]))
    assert ast.literal_eval(out["label"]) == ["1"]


def test_label_file_formats(tmp_path, label_file):
    imagenet = load_labels(label_file)
    assert len(imagenet) == 1000 and imagenet[985] == "daisy"
    plain = tmp_path / "imagenet.label"
    plain.write_text("tench, Tinca tinca,\ngoldfish,\n")
    assert load_labels(plain) == ("tench, Tinca tinca,", "goldfish,")
    bad = tmp_path / "bad.txt"
    bad.write_text("0 a\n2 b\n")
    with pytest.raises(ValueError, match="ids must be 0..1"):
        load_labels(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        load_labels(empty)
