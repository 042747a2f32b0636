"""Plain-text tables for terminals and logs (the report, `resnest predict`): a header row, a dashed rule,
columns padded to their widest cell."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> str:
    """The table as lines of text; columns whose index is in `right` are right-aligned (numbers)."""
    right = set(right)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
