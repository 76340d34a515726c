"""``schema=``: one type for what a structured answer must look like.

:func:`as_schema` turns what a user passes — a pydantic model, a dataclass, a ``TypedDict``
or a JSON Schema dict — into a :class:`Schema`, which knows:

- the JSON Schema, and each provider's accepted subset of it (:meth:`Schema.strict_json_schema`
  for OpenAI's ``strict`` mode and Cencori's ``responseFormat``,
  :meth:`Schema.anthropic_json_schema`, :meth:`Schema.gemini_json_schema`);
- how to read an answer: :meth:`Schema.parse` turns the model's text into the user's type (a
  pydantic instance, a dataclass instance, or a dict for a ``TypedDict`` or a JSON Schema),
  or raises :class:`~cencori_nb.errors.SchemaMismatchError` saying what did not match;
- the table it makes: :meth:`Schema.columns` / :meth:`Schema.frame`.

Optional fields under OpenAI's strict mode. Strict mode needs every property listed in
``required`` and ``additionalProperties: false``. A property that was optional *and has no
default* (a ``NotRequired`` key, a JSON Schema property left out of ``required``) is made
required and nullable (``anyOf: [X, {"type": "null"}]``), and :meth:`Schema.parse` drops a
``null`` it then receives for such a key, so the user's type sees the key absent, as it
asked. A property with a default (pydantic, dataclasses) is made required as it is, which
is exactly what the OpenAI SDK's own ``to_strict_json_schema`` does.

Columns (what ``map`` and the accessors return, one per leaf field):

========================  =========================================================
JSON Schema               pandas dtype
========================  =========================================================
``integer``               ``Int64``
``number``                ``Float64``
``boolean``               ``boolean``
``string`` + ``enum``     ``category`` (categories in the schema's order)
``string`` date-time      ``datetime64[ns, UTC]`` (naive times are taken as UTC)
``string`` date           ``datetime64[ns]`` (midnight)
``string``                ``string``
nested ``object``         flattened: one column per leaf, named ``parent.child``
array, union, other       ``object`` (the Python value, e.g. a list)
========================  =========================================================

Every column is nullable (pandas' nullable dtypes), because a failed row has no value; an
optional field that the model left out is a missing value too. A nested object that is
itself optional flattens the same way: its leaves are all missing when it is null.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
import threading
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import typing_extensions

from . import state
from .errors import SchemaError, SchemaMismatchError
from .text import decoded

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Column", "Schema", "SchemaKind", "as_schema"]

SchemaKind = Literal["pydantic", "dataclass", "typeddict", "json_schema"]

_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")
_MAX_ERRORS_SHOWN = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    """One output column: its dotted ``name``, its pandas ``dtype`` (a string or a
    ``CategoricalDtype``), and the path of keys that reaches its value."""

    name: str
    dtype: Any
    path: tuple[str, ...]


class Schema:
    """A normalised ``schema=`` (build it with :func:`as_schema`)."""

    __slots__ = (
        "_adapter",
        "_canonical",
        "_columns",
        "_forms",
        "_strict",
        "_widened",
        "_validator",
        "fingerprint",
        "json_schema",
        "kind",
        "name",
        "target",
    )

    def __init__(
        self, target: Any, kind: SchemaKind, json_schema: dict[str, Any], name: str
    ) -> None:
        self.target = target
        self.kind: SchemaKind = kind
        self.json_schema = json_schema
        self.name = name
        self._strict: dict[str, Any] | None = None
        self._forms: dict[str, dict[str, Any]] = {}
        self._widened: bool | None = None  # any optional key strict mode made nullable?
        self._columns: list[Column] | None = None
        self._adapter: Any = None
        self._validator: Any = None
        canonical = json.dumps(json_schema, sort_keys=True, separators=(",", ":"), default=str)
        self.fingerprint = hashlib.sha256(f"{name}\0{canonical}".encode()).hexdigest()[:32]
        self._canonical = f"{name}\0{canonical}"

    def refuse_stored_keys(self) -> None:
        """:class:`KeyInPromptError` if a stored API key is anywhere in the schema (a
        description, title, enum value or field name): the schema is sent with every request
        and saved with a batch job, like a prompt. Called once routing has opened the store."""
        from .errors import KeyInPromptError
        from .redact import remove_stored_keys

        if remove_stored_keys(self._canonical) != self._canonical:
            raise KeyInPromptError(
                f"Not sent: the schema {self.name} holds one of your stored API keys (in a "
                "description, title, enum value or field name); the provider would receive it.",
                hint="Remove the key from the schema.",
            )

    def __repr__(self) -> str:
        return f"Schema({self.name!r}, kind={self.kind!r})"

    # --- what each provider is sent ---------------------------------------------------------

    def strict_json_schema(self) -> dict[str, Any]:
        """The schema in OpenAI's ``strict`` subset (also what Cencori's gateway is sent)."""
        if self._strict is None:
            self._strict = _strict(_copy(self.json_schema), root=self.json_schema)
        return typing.cast(dict[str, Any], _copy(self._strict))

    def anthropic_json_schema(self) -> dict[str, Any]:
        """The schema in Anthropic's structured-output subset (a tool's ``input_schema`` too).

        Objects get ``additionalProperties: false``; keywords Anthropic does not accept
        (``minimum``, ``pattern``, ``default``…) move into the description as text, as the
        Anthropic SDK's ``transform_schema`` does, and are still checked by :meth:`parse`.
        """
        return _anthropic(_copy(self.json_schema))

    def gemini_json_schema(self) -> dict[str, Any]:
        """The schema for Gemini's ``responseJsonSchema`` (JSON Schema, refs kept)."""
        return typing.cast(dict[str, Any], _copy(self.json_schema))

    def wire(self, form: Literal["strict", "anthropic", "gemini"]) -> dict[str, Any]:
        """The schema in one provider's subset, built once and shared: adapters put it in a
        request body (serialised, never changed). Everyone else gets a copy from the public
        methods above."""
        built = self._forms.get(form)
        if built is None:
            if form == "strict":
                built = self.strict_json_schema()
            elif form == "anthropic":
                built = self.anthropic_json_schema()
            else:
                built = self.gemini_json_schema()
            self._forms[form] = built
        return built

    # --- reading an answer ------------------------------------------------------------------

    def parse(self, text: str) -> Any:
        """The answer ``text`` as the user's type; :class:`SchemaMismatchError` if it is not
        JSON matching the schema (``errors`` lists what did not match)."""
        value = self.loads(text)
        return self.validate(value)

    def loads(self, text: str) -> Any:
        """The JSON value in ``text`` (a ```` ```json ```` fence around it is tolerated)."""
        body = _unfence(text)
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            raise self._mismatch(
                f"the answer is not JSON ({exc.msg} at character {exc.pos})"
            ) from None
        except RecursionError:  # '[[[[…' from a looping model: not worth a traceback
            raise self._mismatch("the answer is JSON nested too deeply to read") from None
        if "\\" in body:  # an escape (\u0063) can spell a stored key the text check missed
            value = _without_stored_keys(decoded(value, body))  # or a lone "\ud800"
        return value

    def validate(self, value: Any) -> Any:
        """``value`` (decoded JSON) checked and converted to the user's type."""
        if not isinstance(value, dict):
            raise self._mismatch(f"expected a JSON object, got {_json_type(value)}")
        if self._widened is None:
            self._widened = _has_widened(self.json_schema, self.json_schema, ())
        if self._widened:  # else nothing to drop: skip the walk (most schemas, most rows)
            value = _drop_widened_nulls(value, self.json_schema, self.json_schema)
        if self.kind == "json_schema":
            errors = sorted(self._json_validator().iter_errors(value), key=lambda e: list(e.path))
            if errors:
                raise self._mismatch(
                    "; ".join(
                        f"{_clip(_dotted(e.absolute_path))}: {_clip(e.message)}"
                        for e in errors[:_MAX_ERRORS_SHOWN]
                    )
                )
            return value
        import pydantic

        try:
            return self._type_adapter().validate_python(value)
        except pydantic.ValidationError as exc:
            raise self._mismatch(
                "; ".join(
                    f"{_clip(_dotted(e['loc']))}: {_clip(e['msg'])}"
                    for e in exc.errors()[:_MAX_ERRORS_SHOWN]
                )
            ) from None

    def _mismatch(self, errors: str) -> SchemaMismatchError:
        return SchemaMismatchError(
            f"The answer does not match the schema {self.name}: {errors}.",
            hint="Try a clearer prompt or a stronger model, or make the field optional.",
            errors=errors,
            schema_name=self.name,
        )

    def _type_adapter(self) -> Any:
        if self._adapter is None:
            import pydantic

            self._adapter = pydantic.TypeAdapter(self.target)
        return self._adapter

    def _json_validator(self) -> Any:
        if self._validator is None:
            import jsonschema

            cls = jsonschema.validators.validator_for(self.json_schema)
            self._validator = cls(self.json_schema, format_checker=cls.FORMAT_CHECKER)
        return self._validator

    def as_dict(self, parsed: Any) -> dict[str, Any]:
        """A parsed value as plain data (JSON types, datetimes and enums' values)."""
        if parsed is None:
            return {}
        if self.kind == "pydantic":
            data = parsed.model_dump(mode="python")
        elif self.kind == "dataclass" and dataclasses.is_dataclass(parsed):
            data = dataclasses.asdict(parsed)  # type: ignore[arg-type]  # an instance here
        else:
            data = dict(parsed)
        return typing.cast(dict[str, Any], _plain(data))

    # --- the table it makes -----------------------------------------------------------------

    def columns(self) -> list[Column]:
        """One column per leaf field (see the module docstring for the dtypes)."""
        if self._columns is None:
            self._columns = list(_columns(self.json_schema, self.json_schema, ()))
        return list(self._columns)

    def frame(self, values: list[Any], index: Any = None) -> pd.DataFrame:
        """A typed DataFrame with one row per parsed value (None: a row with no value)."""
        import pandas as pd

        from .redact import remove_stored_keys

        cols = self.columns()
        rows = [self.as_dict(v) if v is not None else None for v in values]
        data: dict[str, Any] = {}
        for col in cols:
            raw = [_get(row, col.path) if row is not None else None for row in rows]
            # a field named after a stored key (refused when sent) must not head a column
            data[remove_stored_keys(col.name)] = _series(raw, col.dtype, index)
        return pd.DataFrame(data, index=index)


# --- normalising what the user passed -------------------------------------------------------

_CACHE: dict[int, tuple[Any, Schema]] = {}  # id(type) -> (the type, its Schema)
_CACHE_LOCK = threading.Lock()


def _forget_types() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


# pure results of the types themselves: no environment variable changes them
state.on_reset("schemas.types", _forget_types, env=())


def as_schema(schema: Any) -> Schema:
    """A :class:`Schema` from a pydantic model, a dataclass, a ``TypedDict`` or a JSON
    Schema dict (an object at its root); :class:`SchemaError` for anything else.

    Types are normalised once and remembered (a ``map`` over 1,000 rows builds it once).
    """
    if isinstance(schema, Schema):
        return schema
    if isinstance(schema, Mapping):
        return _from_json_schema(dict(schema))
    key = id(schema)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is schema:
            return hit[1]
    built = _from_type(schema)
    with _CACHE_LOCK:
        _CACHE[key] = (schema, built)
    return built


def _from_type(target: Any) -> Schema:
    kind: SchemaKind
    if not isinstance(target, type):
        raise SchemaError(
            f"schema= takes a pydantic model, a dataclass, a TypedDict or a JSON Schema dict, "
            f"not {type(target).__name__} {_short_repr(target)}.",
            hint="Pass the class itself (schema=Invoice), not an instance.",
            schema_name=type(target).__name__,
        )
    name = target.__name__
    import pydantic

    if issubclass(target, pydantic.BaseModel):
        kind = "pydantic"
    elif dataclasses.is_dataclass(target):
        kind = "dataclass"
    elif typing_extensions.is_typeddict(target):  # typing's and typing_extensions' alike
        kind = "typeddict"
    else:
        raise SchemaError(
            f"schema= takes a pydantic model, a dataclass, a TypedDict or a JSON Schema dict; "
            f"{name} is none of these.",
            hint="Decorate it with @dataclass, or derive it from pydantic.BaseModel.",
            schema_name=name,
        )
    try:
        json_schema = pydantic.TypeAdapter(target).json_schema()
    except (pydantic.PydanticUserError, pydantic.errors.PydanticSchemaGenerationError) as exc:
        raise SchemaError(
            f"The schema {name} has a field type that has no JSON Schema: "
            f"{str(exc).splitlines()[0]}",
            hint="Use JSON types: str, int, float, bool, datetime, date, Enum, list, "
            "nested models.",
            schema_name=name,
        ) from None
    _check_object_root(json_schema, name)
    _check_no_recursion(json_schema, name)
    return Schema(target, kind, json_schema, _api_name(name))


def _from_json_schema(json_schema: dict[str, Any]) -> Schema:
    import jsonschema

    name = str(json_schema.get("title") or "answer")
    try:
        cls = jsonschema.validators.validator_for(json_schema)
        cls.check_schema(json_schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(
            f"The JSON Schema {name!r} is not valid: {exc.message} "
            f"(at {_dotted(exc.absolute_path) or 'its root'}).",
            hint="Check it against https://json-schema.org (draft 2020-12).",
            schema_name=name,
        ) from None
    _check_object_root(json_schema, name)
    _check_no_recursion(json_schema, name)
    try:
        json.dumps(json_schema)
    except (TypeError, ValueError) as exc:
        raise SchemaError(
            f"The JSON Schema {name!r} holds a value that is not JSON: {exc}.",
            schema_name=name,
        ) from None
    return Schema(_copy(json_schema), "json_schema", _copy(json_schema), _api_name(name))


def _check_object_root(json_schema: dict[str, Any], name: str) -> None:
    root = _resolve(json_schema, json_schema)
    if root.get("type") != "object" or not isinstance(root.get("properties"), dict):
        raise SchemaError(
            f"The schema {name!r} must describe a JSON object with properties (every "
            "provider's structured output starts from an object).",
            hint='Wrap it: {"type": "object", "properties": {"items": …}, "required": ["items"]}.',
            schema_name=name,
        )


def _check_no_recursion(json_schema: dict[str, Any], name: str) -> None:
    """Refuse a schema that refers to itself: the columns of a tree are not defined."""

    def walk(node: Any, seen: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                if ref in seen:
                    raise SchemaError(
                        f"The schema {name!r} refers to itself ({ref}); recursive schemas "
                        "have no fixed columns.",
                        hint="Keep the nested part as a string or a list of plain objects.",
                        schema_name=name,
                    )
                walk(_resolve(node, json_schema), (*seen, ref))
            for key, value in node.items():
                if key != "$defs":
                    walk(value, seen)
        elif isinstance(node, list):
            for item in node:
                walk(item, seen)

    walk(json_schema, ())


def _api_name(name: str) -> str:
    """A name every provider accepts (OpenAI: ``[a-zA-Z0-9_-]{1,64}``)."""
    cleaned = _NAME_OK.sub("_", name)[:64]
    return cleaned or "answer"


# --- JSON Schema helpers ---------------------------------------------------------------------


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` followed (``#/$defs/X``); other nodes unchanged."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 32:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise SchemaError(
                f"Only local references (#/$defs/…) are supported, not {ref!r}.",
                schema_name=str(root.get("title") or "answer"),
            )
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise SchemaError(
                f"The reference {ref!r} points at nothing.",
                schema_name=str(root.get("title") or "answer"),
            )
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **extra}
        seen += 1
    return node


def _is_nullable(node: dict[str, Any]) -> bool:
    t = node.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and any(
            isinstance(o, dict) and o.get("type") == "null" for o in options
        ):
            return True
    return False


def _strict(node: Any, *, root: dict[str, Any]) -> Any:
    """OpenAI's strict subset (mirrors ``openai.lib._pydantic._ensure_strict_json_schema``),
    plus: an optional property without a default becomes required *and nullable*."""
    if not isinstance(node, dict):
        return node
    for defs_key in ("$defs", "definitions"):
        defs = node.get(defs_key)
        if isinstance(defs, dict):
            for def_name, def_schema in defs.items():
                defs[def_name] = _strict(def_schema, root=root)
    if node.get("type") == "object" and "additionalProperties" not in node:
        node["additionalProperties"] = False
    properties = node.get("properties")
    if isinstance(properties, dict):
        required = set(node.get("required") or [])
        new_props = {}
        for key, prop in properties.items():
            prop = _strict(prop, root=root)
            if key not in required and isinstance(prop, dict) and "default" not in prop:
                resolved = _resolve(prop, root) if "$ref" in prop else prop
                if not _is_nullable(resolved):
                    prop = {"anyOf": [prop, {"type": "null"}]}
            new_props[key] = prop
        node["properties"] = new_props
        node["required"] = list(properties)
    items = node.get("items")
    if isinstance(items, dict):
        node["items"] = _strict(items, root=root)
    any_of = node.get("anyOf")
    if isinstance(any_of, list):
        node["anyOf"] = [_strict(v, root=root) for v in any_of]
    all_of = node.get("allOf")
    if isinstance(all_of, list):
        if len(all_of) == 1:
            node.update(_strict(all_of[0], root=root))
            node.pop("allOf")
        else:
            node["allOf"] = [_strict(v, root=root) for v in all_of]
    if "default" in node and node["default"] is None:
        node.pop("default")
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        resolved = _resolve({"$ref": ref}, root)
        merged = {**_copy(resolved), **{k: v for k, v in node.items() if k != "$ref"}}
        return _strict(merged, root=root)
    return node


_ANTHROPIC_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)


def _anthropic(node: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's subset (mirrors ``anthropic.lib._parse._transform.transform_schema``)."""
    out: dict[str, Any] = {}
    node = dict(node)
    defs = node.pop("$defs", None)
    if isinstance(defs, dict):
        out["$defs"] = {k: _anthropic(v) for k, v in defs.items()}
    ref = node.pop("$ref", None)
    if ref is not None:
        out["$ref"] = ref
        return out
    type_ = node.pop("type", None)
    any_of = node.pop("anyOf", None)
    one_of = node.pop("oneOf", None)
    all_of = node.pop("allOf", None)
    enum_ = node.get("enum")
    if isinstance(enum_, list) and enum_ and all(_is_primitive(v) for v in enum_):
        out["enum"] = list(node.pop("enum"))
    if "const" in node and _is_primitive(node["const"]):
        out["const"] = node.pop("const")
    literal = "enum" in out or "const" in out
    if literal:
        type_ = None
    if isinstance(any_of, list):
        out["anyOf"] = [_anthropic(v) for v in any_of]
    elif isinstance(one_of, list):
        out["anyOf"] = [_anthropic(v) for v in one_of]
    elif isinstance(all_of, list):
        out["allOf"] = [_anthropic(v) for v in all_of]
    elif not literal and type_ is not None:
        out["type"] = type_
    for key in ("description", "title"):
        value = node.pop(key, None)
        if value is not None:
            out[key] = value
    if type_ == "object":
        out["properties"] = {k: _anthropic(v) for k, v in node.pop("properties", {}).items()}
        node.pop("additionalProperties", None)
        out["additionalProperties"] = False
        required = node.pop("required", None)
        if required is not None:
            out["required"] = list(required)
    elif type_ == "string":
        fmt = node.pop("format", None)
        if fmt in _ANTHROPIC_FORMATS:
            out["format"] = fmt
        elif fmt:
            node["format"] = fmt
    elif type_ == "array":
        items = node.pop("items", None)
        if items is not None:
            out["items"] = _anthropic(items)
        min_items = node.pop("minItems", None)
        if min_items in (0, 1):
            out["minItems"] = min_items
        elif min_items is not None:
            node["minItems"] = min_items
    if node:
        described = out.get("description")
        out["description"] = (
            (described + "\n\n" if described is not None else "")
            + "{"
            + ", ".join(f"{k}: {v}" for k, v in node.items())
            + "}"
        )
    return out


def _is_primitive(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _has_widened(node: Any, root: dict[str, Any], seen: tuple[str, ...]) -> bool:
    """Whether some object in the schema has an optional property without a default that
    does not allow null (what :func:`_strict` widens and :func:`_drop_widened_nulls` undoes)."""
    if isinstance(node, list):
        return any(_has_widened(item, root, seen) for item in node)
    if not isinstance(node, dict):
        return False
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            return False
        return _has_widened(_resolve(node, root), root, (*seen, ref))
    props = node.get("properties")
    if isinstance(props, dict):
        required = set(node.get("required") or [])
        for key, prop in props.items():
            resolved = _resolve(prop, root) if isinstance(prop, dict) else {}
            if key not in required and "default" not in resolved and not _is_nullable(resolved):
                return True
    return any(
        _has_widened(value, root, seen)
        for key, value in node.items()
        if key not in ("$defs", "definitions", "enum", "const", "default")
    )


def _drop_widened_nulls(value: Any, node: Any, root: dict[str, Any]) -> Any:
    """Remove ``key: null`` where the schema left ``key`` optional without a default and
    does not allow null (strict mode made it required and nullable: null means absent)."""
    if not isinstance(node, dict):
        return value
    node = _resolve(node, root)
    if isinstance(value, dict):
        props = node.get("properties")
        if not isinstance(props, dict):
            return value
        required = set(node.get("required") or [])
        out = {}
        for key, item in value.items():
            prop = props.get(key)
            if prop is None:
                out[key] = item
                continue
            resolved = _resolve(prop, root) if isinstance(prop, dict) else {}
            if (
                item is None
                and key not in required
                and "default" not in resolved
                and not _is_nullable(resolved)
            ):
                continue
            out[key] = _drop_widened_nulls(item, prop, root)
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_drop_widened_nulls(v, node["items"], root) for v in value]
    if value is not None:
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if isinstance(options, list):
                objects = [
                    o
                    for o in options
                    if isinstance(o, dict) and _resolve(o, root).get("properties")
                ]
                if len(objects) == 1:
                    return _drop_widened_nulls(value, objects[0], root)
    return value


# --- columns --------------------------------------------------------------------------------


def _non_null(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any] | None:
    """The one non-null alternative of ``X | None``, or None for a real union."""
    node = _resolve(node, root)
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list):
            rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            if len(rest) == 1 and isinstance(rest[0], dict):
                return _resolve(rest[0], root)
            return None
    t = node.get("type")
    if isinstance(t, list):
        rest_t = [x for x in t if x != "null"]
        return {**node, "type": rest_t[0]} if len(rest_t) == 1 else None
    return node


def _columns(node: dict[str, Any], root: dict[str, Any], path: tuple[str, ...]) -> Any:
    node = _resolve(node, root)
    for key, prop in (node.get("properties") or {}).items():
        sub = _non_null(prop, root) if isinstance(prop, dict) else None
        here = (*path, key)
        if sub is not None and sub.get("type") == "object" and sub.get("properties"):
            yield from _columns(sub, root, here)
        else:
            yield Column(".".join(here), _dtype(sub), here)


def _dtype(node: dict[str, Any] | None) -> Any:
    if node is None:
        return "object"
    enum_ = node.get("enum")
    if isinstance(enum_, list) and enum_ and all(isinstance(v, str) for v in enum_):
        import pandas as pd

        return pd.CategoricalDtype(categories=list(dict.fromkeys(enum_)))
    t = node.get("type")
    if t == "integer":
        return "Int64"
    if t == "number":
        return "Float64"
    if t == "boolean":
        return "boolean"
    if t == "string":
        fmt = node.get("format")
        if fmt == "date-time":
            return "datetime64[ns, UTC]"
        if fmt == "date":
            return "datetime64[ns]"
        return "string"
    return "object"


def _get(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = row
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _series(raw: list[Any], dtype: Any, index: Any) -> Any:
    import pandas as pd

    if isinstance(dtype, pd.CategoricalDtype):
        cats = set(dtype.categories)
        return pd.Series([v if v in cats else None for v in raw], index=index, dtype=dtype)
    if dtype == "datetime64[ns, UTC]":
        return pd.Series(
            pd.to_datetime(pd.Series(raw, dtype="object"), utc=True, errors="coerce").array,
            index=index,
        ).astype(dtype)
    if dtype == "datetime64[ns]":
        values = pd.to_datetime(pd.Series(raw, dtype="object"), errors="coerce")
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        return pd.Series(values.array, index=index).astype(dtype)
    if dtype == "object":
        return pd.Series(raw, index=index, dtype="object")
    return pd.Series(raw, index=index, dtype=dtype)


# --- small helpers ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


_MAX_ERROR_CHARS = 160


def _without_stored_keys(value: Any) -> Any:
    """Decoded JSON with every stored key removed from its strings (keys and values).

    The answer's text has stored keys removed before it is read, but a hostile model can
    write one with JSON escapes (``"sk-\\u0070roj-…"``) that only decoding spells out; the
    parsed value then reaches ``.parsed``, a DataFrame and a job's results file. Rebuilt
    only when a key is really there (re-encoding is the cheap test)."""
    from .redact import remove_stored_keys

    encoded = json.dumps(value, ensure_ascii=False)
    cleaned = remove_stored_keys(encoded)
    return value if cleaned == encoded else json.loads(cleaned)


def _clip(text: str) -> str:
    """One line of a validation message, at most 160 characters: it quotes the model's own
    values (and keys), which may be long or hostile, into an error, a row and the retry.
    Stored keys go first: a key cut by the clip would survive the error's own scrub."""
    from .redact import remove_stored_keys

    one_line = " ".join(remove_stored_keys(str(text)).split())
    if len(one_line) <= _MAX_ERROR_CHARS:
        return one_line
    return one_line[: _MAX_ERROR_CHARS - 1] + "…"


def _dotted(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(root)"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


def _unfence(text: str) -> str:
    match = _FENCE.match(text)
    return match.group(1) if match else text
