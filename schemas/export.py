"""JSON Schema export for non-Python consumers."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.registry import TOPICS


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one JSON Schema per topic (``<topic>.schema.json``) and an index; return paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index = []
    for spec in TOPICS:
        schema = spec.adapter.json_schema(mode="serialization")
        schema.setdefault("title", spec.schema)
        schema["x-hashplane-topic"] = spec.name
        schema["x-hashplane-key"] = spec.key
        path = directory / f"{spec.name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
        index.append({**spec.as_dict(), "file": path.name})
    idx = directory / "index.json"
    idx.write_text(json.dumps(index, indent=2) + "\n")
    written.append(idx)
    return written
