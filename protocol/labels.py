"""Label files: PaddleClas's `<id> <name>` lists (imagenet1k_label_list.txt) or one name per line
(Paddle Serving's imagenet.label, with its trailing commas)."""

from __future__ import annotations

from pathlib import Path


def load_labels(path: Path) -> tuple[str, ...]:
    """Class names indexed by class id. Names keep their text; callers strip commas where PaddleClas does."""
    try:
        lines = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"label file {path}: cannot read: {exc}") from exc
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ValueError(f"label file {path} is empty")
    pairs = [line.strip().split(" ", 1) for line in lines]
    if all(len(p) == 2 and p[0].isdigit() for p in pairs):
        ids = [int(p[0]) for p in pairs]
        if sorted(ids) != list(range(len(ids))):
            raise ValueError(f"label file {path}: ids must be 0..{len(ids) - 1}, each once")
        names = [""] * len(ids)
        for class_id, (_, name) in zip(ids, pairs, strict=True):
            names[class_id] = name.strip()
        return tuple(names)
    return tuple(line.strip() for line in lines)
