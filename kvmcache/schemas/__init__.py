"""JSON Schema (draft 2020-12) files of kvmcache's three report documents, shipped with the
package: ``replay-1.schema.json``, ``compare-1.schema.json`` and ``sweep-1.schema.json``.

Each is self-contained (the replay document is a ``$defs`` entry of all three). Validate a
report with any JSON Schema tool, e.g. ``python -m jsonschema`` or :func:`load_schema`."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def schema_file(schema: str) -> str:
    """The file of a document's ``schema`` name: ``kvmcache.replay/1`` -> ``replay-1.schema.json``
    (the names themselves are defined once, in report/documents.py)."""
    return schema.removeprefix("kvmcache.").replace("/", "-") + ".schema.json"


def load_schema(schema: str) -> dict[str, Any]:
    """The JSON Schema of a document's ``schema`` name (e.g. ``kvmcache.replay/1``)."""
    text = resources.files(__name__).joinpath(schema_file(schema)).read_text(encoding="utf-8")
    return json.loads(text)
