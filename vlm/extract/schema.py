"""What to extract: a fields list, a JSON Schema dict or a pydantic model, turned into one internal schema.

Supported schemas are flat objects. Each property may be:
- ``{"type": "string"}`` (optionally ``"format": "date"`` -> ISO ``YYYY-MM-DD``, ``"maxLength"``,
  ``"enum"`` of strings, ``"pattern"`` (the value is an OCR substring matching it, see ``patterns``),
  ``"description"``);
- ``{"type": "number"}`` / ``{"type": "integer"}`` (the amount as printed, converted: ``"RM 1,234.50"`` -> 1234.5);
- ``{"type": "boolean"}`` (the model chooses ``true``/``false``).
``["string", "null"]`` types, ``anyOf`` with null (pydantic's ``Optional``) and ``$ref`` to enums are unwrapped.
Nested objects and arrays are not supported and are rejected with a clear message.

Typing rules (applied after decoding; the decoder itself emits grounded strings, see ``constrained``):
- A value the model can't find is ``null``, never an invented string; every field is nullable. Validation
  runs against the schema with ``null`` allowed for each property; a pydantic model that requires a field
  the document lacks raises :class:`ExtractionError` naming it.
- Strings are returned as found (whitespace collapsed; upper-cased for a template's ``upper_fields``);
  dates as found unless the schema says ``format: date``, then ISO (day-first when ambiguous), or ``null``
  when the text is no date.
- Amounts are strings exactly as printed unless the schema says number/integer.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

KINDS = ("string", "number", "integer", "boolean")
DEFAULT_MAX_LENGTH = 200


class SchemaError(InputError):
    """A fields list or schema vlm can't extract with (invalid JSON Schema, unsupported shape, empty)."""


class ExtractionError(InputError):
    """The document's values don't satisfy the requested schema (e.g. a required field was not found)."""


@dataclass
class FieldSpec:
    name: str
    kind: str = "string"
    format: str | None = None  # "date" -> ISO output
    enum: tuple[str, ...] | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    description: str | None = None
    pattern: str | None = None  # values are OCR substrings matching it (see ``patterns``)
    upper: bool = False  # string values are returned upper-cased (a template's convention, e.g. SROIE keys)
    lines: Any = None  # a ``layout.LineChoice``: the value is a whole OCR row or run of rows (a template's)
    # The JSON Schema allows null here (null among its types, an X-or-null union, null in its enum). Extraction
    # ignores it (every field is nullable there); ``structured`` answers forbid null where this is False.
    nullable: bool = True

    @property
    def choices(self) -> tuple[str, ...] | None:
        """Closed set of strings the decoder may emit for this field (None: grounded free text)."""
        if self.kind == "boolean":
            return ("true", "false")
        return self.enum


@dataclass
class DocSchema:
    """The internal schema: fields in order (empty + ``freeform`` for "every key-value pair")."""

    fields: list[FieldSpec] = field(default_factory=list)
    freeform: bool = False
    json_schema: dict | None = None  # the user's JSON Schema, for validation
    model: Any = None  # the user's pydantic model class, for validation
    # a template's rule-based reader: page OCR lines -> {field: value or None} (see ``prompts.Template.reader``)
    reader: Any = None
    reader_fields: tuple[str, ...] = ()  # fields taken from the reader when it has a value

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def descriptions(self) -> dict[str, str]:
        return {f.name: f.description for f in self.fields if f.description}

    def empty(self) -> dict:
        return {f.name: None for f in self.fields}


# -- building --------------------------------------------------------------------------------------
def from_fields(fields, date_fields=(), descriptions=None, patterns=None, upper=(), lines=None) -> DocSchema:
    if isinstance(fields, str):
        fields = [f for f in (p.strip() for p in fields.split(",")) if f]
    if not isinstance(fields, (list, tuple)) or not fields:
        raise SchemaError("the field list is empty: name at least one field to extract")
    names = []
    for f in fields:
        if not isinstance(f, str) or not f.strip():
            raise SchemaError(f"field names must be non-empty strings, got {f!r}")
        if f.strip() in names:
            raise SchemaError(f"field {f.strip()!r} is listed twice")
        names.append(f.strip())
    descriptions, patterns, lines = descriptions or {}, patterns or {}, lines or {}
    return DocSchema([FieldSpec(n, format="date" if n in date_fields else None, description=descriptions.get(n),
                                pattern=patterns.get(n), upper=n in upper, lines=lines.get(n)) for n in names])


def _resolve(prop: dict, root: dict) -> dict:
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        merged = dict(target)
        merged.update({k: v for k, v in prop.items() if k != "$ref"})
        return merged
    return prop


def _field_from_property(name: str, prop: Any, root: dict) -> FieldSpec:
    if not isinstance(prop, dict):
        raise SchemaError(f"property {name!r} must be a JSON Schema object, got {prop!r}")
    prop = _resolve(prop, root)
    allows_null = False
    for key in ("anyOf", "oneOf"):
        if key in prop:  # Optional[X] from pydantic: anyOf [X, null]
            options = [_resolve(p, root) for p in prop[key] if isinstance(p, dict)]
            allows_null = allows_null or any(p.get("type") == "null" for p in options)
            options = [p for p in options if p.get("type") != "null"]
            if len(options) != 1:
                raise SchemaError(f"property {name!r}: only 'X or null' unions are supported")
            merged = dict(options[0])
            for k in ("description", "title"):
                if k in prop and k not in merged:
                    merged[k] = prop[k]
            prop = merged
    types = prop.get("type", "string" if "enum" in prop else None)
    if isinstance(types, list):
        allows_null = allows_null or "null" in types
        types = [t for t in types if t != "null"]
        if len(types) != 1:
            raise SchemaError(f"property {name!r}: only a single type (plus null) is supported, got {prop['type']}")
        types = types[0]
    if types is None:
        types = "string"
    if types not in KINDS:
        raise SchemaError(
            f"property {name!r} has type {types!r}; supported: {', '.join(KINDS)} (flat objects only, "
            "no nested objects or arrays)"
        )
    enum = prop.get("enum")
    if enum is not None:
        allows_null = allows_null or None in enum
        enum = tuple(e for e in enum if e is not None)
        if not enum or not all(isinstance(e, str) and e for e in enum):
            raise SchemaError(f"property {name!r}: enum values must be non-empty strings")
        types = "string"
    max_length = prop.get("maxLength", DEFAULT_MAX_LENGTH)
    fmt = prop.get("format")
    pattern = prop.get("pattern")
    if pattern is not None and enum is None:
        from .patterns import compile_pattern

        try:
            compile_pattern(pattern)
        except ValueError as exc:
            raise SchemaError(f"property {name!r}: {exc}") from None
    return FieldSpec(
        name=name, kind=types, format="date" if fmt == "date" else None, enum=enum,
        max_length=max(1, int(max_length)), description=prop.get("description"),
        pattern=pattern if enum is None else None, nullable=allows_null,
    )


def from_json_schema(schema: Any) -> DocSchema:
    if not isinstance(schema, dict):
        raise SchemaError(f"a schema must be a JSON object (dict), got {type(schema).__name__}")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise SchemaError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    if schema.get("type", "object") != "object":
        raise SchemaError(f"the schema must describe an object (type: object), not {schema.get('type')!r}")
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise SchemaError("the schema has no properties: name at least one field to extract")
    return DocSchema([_field_from_property(n, p, schema) for n, p in props.items()], json_schema=schema)


def from_pydantic(model) -> DocSchema:
    out = from_json_schema(model.model_json_schema())
    out.model = model
    return out


def load_schema_file(path) -> dict:
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"schema file not found: {p}")
    try:
        return json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"schema file {p} is not valid JSON: {exc}") from None


def resolve_schema(fields=None, schema=None, template=None) -> DocSchema:
    """One internal schema from exactly one of ``fields``, ``schema`` or ``template``."""
    given = [x is not None for x in (fields, schema, template)]
    if sum(given) > 1:
        raise SchemaError("give only one of fields, schema or template")
    if template is not None:
        from .prompts import get_template

        t = get_template(template) if isinstance(template, str) else template
        if t.freeform:
            return DocSchema(freeform=True)
        doc = from_fields(list(t.fields), t.date_fields, t.descriptions, t.patterns, t.upper_fields, t.lines)
        doc.reader, doc.reader_fields = t.reader, tuple(t.reader_fields)
        return doc
    if schema is not None:
        if isinstance(schema, dict):
            return from_json_schema(schema)
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            return from_pydantic(schema)
        if isinstance(schema, (str, bytes)) or hasattr(schema, "__fspath__"):
            return from_json_schema(load_schema_file(schema))
        raise SchemaError(f"schema must be a JSON Schema dict, a pydantic model class or a path, got {schema!r}")
    if fields is not None:
        return from_fields(fields)
    raise SchemaError("nothing to extract: give fields, a schema or a template")


# -- typing rules ----------------------------------------------------------------------------------
_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}


def _year(y: str) -> int:
    v = int(y)
    return v + 2000 if len(y) <= 2 and v < 70 else v + 1900 if len(y) <= 2 else v


def _safe_date(y: int, m: int, d: int) -> str | None:
    try:
        return _dt.date(y, m, d).isoformat()
    except ValueError:
        return None


def parse_date(text: str) -> str | None:
    """ISO date of a printed date (``25/12/2018``, ``12-01-19``, ``2018-12-25``, ``25 Dec 2018``...).

    Numeric day/month order is day-first unless only month-first is a valid date. None if no date.
    """
    s = text.strip()
    m = re.search(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})", s)
    if m:
        return _safe_date(int(m[1]), int(m[2]), int(m[3]))
    m = re.search(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{2,4})(?!\d)", s)
    if m:
        a, b, y = int(m[1]), int(m[2]), _year(m[3])
        return _safe_date(y, b, a) or _safe_date(y, a, b)
    m = re.search(r"(\d{1,2})(?:st|nd|rd|th)?[\s\-/.,]*([A-Za-z]{3,9})\.?[\s\-/.,]*(\d{2,4})", s)
    if m and m[2][:3].lower() in _MONTHS:
        return _safe_date(_year(m[3]), _MONTHS[m[2][:3].lower()], int(m[1]))
    m = re.search(r"([A-Za-z]{3,9})\.?\s*(\d{1,2})(?:st|nd|rd|th)?,?\s*(\d{2,4})", s)
    if m and m[1][:3].lower() in _MONTHS:
        return _safe_date(_year(m[3]), _MONTHS[m[1][:3].lower()], int(m[2]))
    return None


def parse_number(text: str, integer: bool = False):
    """A number from an amount as printed: currency and spaces dropped, ``,`` thousands or decimal comma."""
    m = re.search(r"-?\d[\d,. ]*", text)
    if not m:
        return None
    s = m.group(0).replace(" ", "").rstrip(".,")
    if "," in s and "." in s:
        s = s.replace(",", "") if s.rfind(".") > s.rfind(",") else s.replace(".", "").replace(",", ".")
    elif "," in s:
        head, _, tail = s.rpartition(",")
        s = head.replace(",", "") + ("." + tail if len(tail) != 3 else tail)
    if s.count(".") > 1:
        head, _, tail = s.rpartition(".")
        s = head.replace(".", "") + "." + tail
    try:
        value = float(s)
    except ValueError:
        return None
    if integer:
        return int(value) if value == int(value) else None
    return value


def coerce(spec: FieldSpec, value: str | None):
    """Apply the typing rules to one decoded string (or None)."""
    if value is None:
        return None
    value = " ".join(value.split())
    if not value:
        return None
    if spec.kind == "boolean":
        return {"true": True, "false": False}.get(value.lower())
    if spec.kind in ("number", "integer"):
        return parse_number(value, integer=spec.kind == "integer")
    if spec.enum is not None:
        return value if value in spec.enum else None
    if spec.format == "date":
        return parse_date(value)
    return (value.upper() if spec.upper else value)[: spec.max_length]


def _nullable(schema: dict) -> dict:
    """The user's schema with null allowed for every property and nothing required."""
    out = dict(schema)
    out.pop("required", None)
    out["properties"] = {name: {"anyOf": [prop, {"type": "null"}]} for name, prop in schema["properties"].items()}
    return out


def validate(doc: DocSchema, values: dict):
    """Validate typed values; returns the dict, or the pydantic model instance when one was given."""
    if doc.model is not None:
        from pydantic import ValidationError

        try:
            return doc.model.model_validate(values)
        except ValidationError as exc:
            missing = [".".join(str(p) for p in e["loc"]) for e in exc.errors() if values.get(str(e["loc"][0])) is None]
            if missing:
                raise ExtractionError(
                    f"required field(s) not found in the document: {', '.join(missing)} "
                    "(make them Optional to get None instead)"
                ) from None
            raise ExtractionError(f"extracted values do not fit {doc.model.__name__}: {exc}") from None
    if doc.json_schema is not None:
        import jsonschema

        try:
            jsonschema.validate(values, _nullable(doc.json_schema))
        except jsonschema.ValidationError as exc:
            raise ExtractionError(f"extracted values do not fit the schema: {exc.message}") from None
        return values
    for name, v in values.items():
        if v is not None and not isinstance(v, str):
            raise ExtractionError(f"field {name!r} is not a string or null: {v!r}")
    return values
