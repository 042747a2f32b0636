"""The key tables of docs/configuration.md, written from the schema (`serving.config.schema`) so that the
documentation cannot drift from what the parser accepts.

    python -m resnest_serving.serving.config.docs           # rewrite the tables in docs/configuration.md
    python -m resnest_serving.serving.config.docs --check   # exit 1 when they are out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, Field
from pathlib import Path

from resnest_serving.serving.config.schema import (
    AuthConfig,
    DagConfig,
    LocalServiceConf,
    OpConfig,
    ServerConfig,
    Setting,
    TlsConfig,
    TracerConfig,
    settings_of,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TABLES = {"top": [("", ServerConfig)], "dag": [("", DagConfig), ("tracer.", TracerConfig)], "op": [("", OpConfig)],
          "local_service_conf": [("", LocalServiceConf)], "security": [("tls.", TlsConfig), ("auth.", AuthConfig)]}
ORIGIN = {"paddle": "", "ours": "*Ours.* ", "compat": "*Compat.* ", "ours, in this place": "*Ours, in this place.* "}


def type_column(spec: Setting) -> str:
    if spec.type_doc:
        return spec.type_doc
    if spec.choices:
        return " \\| ".join(f"`{c}`" for c in spec.choices)
    base = {"int": "int", "number": "number", "bool": "bool", "str": "str", "port": "int (port)", "path": "str (path)",
            "str_list": "list of str", "section": "mapping"}[spec.kind]
    low, high = spec.minimum, spec.maximum
    if low is not None and high is not None:
        return f"{base}, {low:g} – {high:g}"
    return f"{base} ≥ {low:g}" if low is not None else base


def default_column(f: Field, spec: Setting) -> str:
    if spec.default_doc:
        return spec.default_doc
    if spec.kind == "section":
        return "{}"
    value = f.default
    if value is MISSING or value is None:
        return "absent"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"`{value}`" if spec.choices else f"`\"{value}\"`"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(name: str) -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for prefix, schema in TABLES[name]:
        for f, spec in settings_of(schema):
            if spec.kind == "section" and prefix == "" and schema is DagConfig:
                continue  # tracer's keys are listed as tracer.<key>
            meaning = (ORIGIN[spec.origin] + spec.doc).strip()
            rows.append(f"| `{prefix}{f.name}` | {type_column(spec)} | {default_column(f, spec)} | {meaning} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """`text` with every `<!-- table: NAME -->` ... `<!-- end table -->` block rewritten from the schema."""
    for name in TABLES:
        start_mark, end_mark = f"<!-- table: {name} -->", "<!-- end table -->"
        start = text.index(start_mark) + len(start_mark)
        end = text.index(end_mark, start)
        text = text[:start] + "\n" + table(name) + "\n" + text[end:]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the tables are current")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            sys.stderr.write(f"{DOC} is out of date: run python -m resnest_serving.serving.config.docs\n")
            return 1
        return 0
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
