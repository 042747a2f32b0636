"""Model output → response values, as PaddleClas clients expect them (../shared/reference/paddle_serving_protocol.md §8).

`label` and `prob` are `str(list)` of the top-1 per image (label text with commas removed, prob as a
Python float); with topk > 1 the response also has `class_ids`, `scores` (rounded to 5 places, as
PaddleClas's Topk does) and `label_names`, each a `str(list)` of per-image lists. All parse with
ast.literal_eval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TopK:
    """Per-image top-k classes of one batch."""

    class_ids: list[list[int]]
    scores: list[list[float]]


def top_k(probs: np.ndarray, k: int) -> TopK:
    """Highest k scores per row, best first (ties: lower class id first)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(probs, order, axis=1)
    return TopK(order.tolist(), scores.tolist())


class Postprocessor:
    """Formats top-k results into response key/value strings."""

    def __init__(self, labels: tuple[str, ...] | None, topk: int = 1):
        self.labels = labels
        self.topk = topk

    def label(self, class_id: int) -> str:
        if self.labels is None or class_id >= len(self.labels):
            return str(class_id)
        return self.labels[class_id]

    def __call__(self, probs: np.ndarray) -> dict[str, str]:
        result = top_k(probs, self.topk)
        out = {
            "label": str([self.label(ids[0]).replace(",", "") for ids in result.class_ids]),
            "prob": str([scores[0] for scores in result.scores]),
        }
        if self.topk > 1:
            out["class_ids"] = str(result.class_ids)
            out["scores"] = str([[round(s, 5) for s in row] for row in result.scores])
            out["label_names"] = str([[self.label(i) for i in ids] for ids in result.class_ids])
        return out
