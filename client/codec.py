"""What every protocol adapter shares: building the pipeline ``Request`` and turning the ``Response``
into typed results.

Response values are Python literals in strings (``"['daisy']"``, ``"[0.93]"``); they are read with
``ast.literal_eval`` only and then type-checked, never ``eval``-ed.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from resnest_serving.client.errors import BadResponseError, ServingError
from resnest_serving.protocol.pipeline_service_pb2 import Request, Response

__all__ = [
    "DEFAULT_METHOD",
    "MAX_VALUE_CHARS",
    "Classification",
    "build_request",
    "check_response",
    "parse_classifications",
    "response_values",
    "safe_literal",
]

DEFAULT_METHOD = "prediction"
"""The method segment PaddleClas's clients use (``/imagenet/prediction``); the server does not check it."""

MAX_VALUE_CHARS = 16 * 1024 * 1024
"""Longest response value parsed (a guard against pathological input to the literal parser)."""


@dataclass(frozen=True)
class Classification:
    """One image's answer, best class first.

    ``label``/``prob`` are the top-1 (PaddleClas's ``label``/``prob`` keys: label text with commas
    removed). ``labels``/``scores`` hold the top-k when the server runs with topk > 1 (``label_names``,
    ``scores``), else just the top-1; ``class_ids`` is empty when the server does not send ids (topk 1).
    """

    label: str
    prob: float
    labels: tuple[str, ...]
    scores: tuple[float, ...]
    class_ids: tuple[int, ...] = ()

    @property
    def class_id(self) -> int | None:
        """Top-1 class id, or None when the server did not send ids."""
        return self.class_ids[0] if self.class_ids else None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def build_request(items: Sequence[tuple[str, str]], *, service_name: str = "", method: str = DEFAULT_METHOD,
                  log_id: int = 0, clientip: str = "") -> Request:
    """A pipeline Request with one ``key``/``value`` pair per item (key, base64 image)."""
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate request keys: {keys}")
    return Request(key=keys, value=[v for _, v in items], name=service_name, method=method,
                   logid=int(log_id), clientip=clientip)


def safe_literal(text: str, *, max_chars: int = MAX_VALUE_CHARS) -> Any:
    """``ast.literal_eval`` of a response value, with every failure (including non-literals such as
    ``__import__('os')``) reported as ``BadResponseError``."""
    if not isinstance(text, str):
        raise BadResponseError(f"response value is {type(text).__name__}, not str")
    if len(text) > max_chars:
        raise BadResponseError(f"response value too long to parse ({len(text)} > {max_chars} characters)")
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise BadResponseError(f"response value is not a Python literal: {_preview(text)} ({exc})") from None


def check_response(response: Response) -> None:
    """Raise ``ServingError`` for ``err_no != 0``."""
    if response.err_no != 0:
        raise ServingError(response.err_no, response.err_msg)


def response_values(response: Response) -> dict[str, str]:
    """``{key: value}`` of a successful response; key/value lists of different lengths are an error."""
    check_response(response)
    if len(response.key) != len(response.value):
        raise BadResponseError(f"response has {len(response.key)} keys but {len(response.value)} values")
    return dict(zip(response.key, response.value, strict=True))


def parse_classifications(response: Response, n_images: int | None = None) -> list[Classification]:
    """Typed per-image results of a PaddleClas-style response, checked against ``n_images`` if given.

    Needs ``label`` and ``prob`` (``str(list)`` of the top-1 per image); uses ``class_ids``, ``scores``
    and ``label_names`` (``str`` of per-image lists) when all three are present.
    """
    values = response_values(response)
    missing = [k for k in ("label", "prob") if k not in values]
    if missing:
        raise BadResponseError(f"response lacks key(s) {missing}; it has {sorted(values)}")
    labels = _list_of(safe_literal(values["label"]), _is_str, "label", "a str")
    probs = _list_of(safe_literal(values["prob"]), _is_number, "prob", "a finite number")
    n = len(labels)
    if len(probs) != n:
        raise BadResponseError(f"response has {n} labels but {len(probs)} probs")
    if n_images is not None and n != n_images:
        raise BadResponseError(f"response has {n} results for {n_images} images")
    if n == 0:
        raise BadResponseError("response has no results")

    topk_keys = ("class_ids", "scores", "label_names")
    if all(k in values for k in topk_keys):
        ids = _nested(values["class_ids"], _is_int, "class_ids", "an int", n)
        scores = _nested(values["scores"], _is_number, "scores", "a finite number", n)
        names = _nested(values["label_names"], _is_str, "label_names", "a str", n)
        out = []
        for i in range(n):
            if not (len(ids[i]) == len(scores[i]) == len(names[i])):
                raise BadResponseError(f"image {i}: class_ids, scores and label_names differ in length")
            out.append(Classification(labels[i], float(probs[i]), tuple(names[i]),
                                      tuple(float(s) for s in scores[i]), tuple(ids[i])))
        return out
    return [Classification(labels[i], float(probs[i]), (labels[i],), (float(probs[i]),)) for i in range(n)]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _list_of(value: Any, check: Any, key: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadResponseError(f"response value {key!r} is a {type(value).__name__}, not a list")
    for i, v in enumerate(value):
        if not check(v):
            raise BadResponseError(f"response value {key!r}[{i}] = {v!r} is not {what}")
    return value


def _nested(text: str, check: Any, key: str, what: str, n: int) -> list[list[Any]]:
    outer = safe_literal(text)
    if not isinstance(outer, list) or len(outer) != n:
        got = f"{len(outer)} entries" if isinstance(outer, list) else type(outer).__name__
        raise BadResponseError(f"response value {key!r} should list {n} images, got {got}")
    rows = [_list_of(row, check, f"{key}[{i}]", what) for i, row in enumerate(outer)]
    for i, row in enumerate(rows):
        if not row:
            raise BadResponseError(f"response value {key!r}[{i}] is empty")
    return rows


def _preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
