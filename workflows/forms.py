"""form-js forms: structural validation at deploy time, submission validation at run time.

User tasks reference forms in the bpmn.io form-js JSON format::

    {"type": "default", "id": "Form_1", "schemaVersion": 16, "components": [...]}

`parse_form` checks the document itself (raising `FormDefinitionError`), and
`build_schema` turns it into a marshmallow schema that every submission passes
through (`validate_submission`, raising `SubmissionInvalid`). Submissions are
untrusted: every value is type-checked strictly (JSON types, no coercion from
strings), unknown keys are rejected, and errors are keyed by the field's data
path ("nom", or "adreca.carrer" for a field inside a group with a ``path``).

What is deliberately *not* done server-side:

* FEEL is never evaluated. A field whose ``conditional.hide`` is set (on it or on
  an enclosing group) may be hidden in the browser, so it is never enforced as
  required; its value, when sent, is still type-checked.
* ``validate.pattern`` is run with Python's ``re`` (``re.fullmatch``); JavaScript
  regex syntax that Python does not understand is rejected at deploy time.
* ``disallowPassedDates`` is not enforced (it depends on the user's time zone).

Components with ``disabled: true`` are not part of the data (form-js does not
submit them), so sending a value for one is an "Unknown field." error. Read-only
fields are accepted but never enforced as required; callers that prefill them
should overwrite the submitted value with their own.
"""
from __future__ import annotations

import json
import math
import re
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load

__all__ = [
    "FormDefinitionError",
    "SubmissionInvalid",
    "parse_form",
    "form_fields",
    "build_schema",
    "validate_submission",
]

# --------------------------------------------------------------------------- limits

KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
MAX_KEY_LENGTH = 100
MAX_PATTERN_LENGTH = 200
DEFAULT_MAX_TEXT_LENGTH = 10_000
MAX_SUBMISSION_FIELDS = 100
MAX_FORM_BYTES = 1_000_000
MAX_COMPONENTS = 1_000
MAX_DEPTH = 20
MAX_OPTIONS = 1_000
MAX_DYNAMIC_ITEMS = 1_000  # list length when options come from data/FEEL
MAX_OPTIONS_IN_MESSAGE = 20
SCHEMA_CACHE_SIZE = 256

MISSING_MSG = "Missing data for required field."

# Component types (form-js `type`).
INPUT_TYPES = frozenset(
    {"textfield", "textarea", "number", "checkbox", "checklist", "radio", "select", "taglist", "datetime"}
)
OPTION_TYPES = frozenset({"radio", "select", "checklist", "taglist"})
MULTI_TYPES = frozenset({"checklist", "taglist"})
TEXT_TYPES = frozenset({"textfield", "textarea"})
CONTAINER_TYPES = frozenset({"group"})
NO_DATA_TYPES = frozenset(
    {"text", "html", "spacer", "separator", "image", "button", "iframe", "table", "documentPreview"}
)
# Real form-js types that carry data we cannot validate server-side.
UNSUPPORTED_TYPES = frozenset({"dynamiclist", "expression", "filepicker", "multipage", "page"})
DATETIME_SUBTYPES = frozenset({"date", "time", "datetime"})
VALIDATION_TYPES = {
    "email": re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+"),
    "phone": re.compile(r"\+?[0-9][0-9 ().\-/]{2,30}"),
}

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME_RE = re.compile(r"(\d{2}):(\d{2})(?::(\d{2}))?(Z|[+-]\d{2}:\d{2})?")
_DATETIME_RE = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}(?::\d{2})?(?:Z|[+-]\d{2}:\d{2})?)")
_DECIMAL_STRING_RE = re.compile(r"-?\d+(?:\.\d+)?")


# --------------------------------------------------------------------------- errors


class FormDefinitionError(ValueError):
    """The form JSON itself is invalid (raised at deploy time)."""


class SubmissionInvalid(ValueError):
    """A submission does not satisfy its form.

    ``errors`` maps the field's data path (``"nom"``, ``"adreca.carrer"``, or
    ``"_schema"`` for problems with the submission as a whole) to a list of
    short English messages.
    """

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        summary = "; ".join(f"{key}: {' '.join(msgs)}" for key, msgs in sorted(errors.items()))
        super().__init__(f"Invalid submission: {summary}")


# --------------------------------------------------------------------------- form analysis


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not (isinstance(value, float) and not math.isfinite(value))
    )


def _describe(comp: Any, where: str) -> str:
    """Name a component in error messages: key, else id, else its position."""
    if isinstance(comp, dict):
        key, cid, ctype = comp.get("key"), comp.get("id"), comp.get("type")
        if isinstance(key, str) and key:
            return f"component '{key}'"
        if isinstance(cid, str) and cid:
            return f"component '{cid}'" + (f" ({ctype})" if isinstance(ctype, str) else "")
    return f"component at {where}"


def _option_token(value: Any) -> tuple[str, Any]:
    """Type-exact identity of an option value (so True != 1 and "1" != 1)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, str):
        return ("str", value)
    return ("number", value)  # 1 and 1.0 are the same JSON number


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class _Scope:
    """One level of submission data: field keys and group paths live here."""

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}  # key -> field spec dict | _Scope

    def has_required(self) -> bool:
        return any(
            (isinstance(e, _Scope) and e.has_required()) or (isinstance(e, dict) and e["required"])
            for e in self.entries.values()
        )


class _Analysis:
    def __init__(self) -> None:
        self.root = _Scope()
        self.fields: list[dict] = []
        self.ids: set[str] = set()
        self.count = 0


def _check_number(name: str, value: Any, what: str) -> None:
    if value is None:
        return
    if not _is_number(value):
        raise FormDefinitionError(f"{name}: {what} must be a number, got {json.dumps(value)[:50]}")


def _check_length(name: str, value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormDefinitionError(f"{name}: {what} must be a non-negative integer")
    return value


def _analyse_values(comp: dict, name: str) -> list | None:
    """Static options of a select/radio/checklist/taglist, or None when dynamic."""
    values = comp.get("values")
    dynamic = comp.get("valuesKey") or comp.get("valuesExpression")
    if values is None or (values == [] and dynamic):
        if dynamic:
            for prop in ("valuesKey", "valuesExpression"):
                if comp.get(prop) is not None and not isinstance(comp.get(prop), str):
                    raise FormDefinitionError(f"{name}: {prop} must be a string")
            return None
        raise FormDefinitionError(f"{name}: 'values' is required for type '{comp['type']}'")
    if not isinstance(values, list) or not values:
        raise FormDefinitionError(f"{name}: 'values' must be a non-empty list")
    if len(values) > MAX_OPTIONS:
        raise FormDefinitionError(f"{name}: too many values (max {MAX_OPTIONS})")
    seen: set = set()
    out = []
    for i, option in enumerate(values):
        if not isinstance(option, dict) or "value" not in option:
            raise FormDefinitionError(f"{name}: values[{i}] must be an object with a 'value'")
        value = option["value"]
        if not (isinstance(value, (str, bool)) or _is_number(value)):
            raise FormDefinitionError(f"{name}: values[{i}].value must be a string, number or boolean")
        label = option.get("label")
        if label is not None and not isinstance(label, str):
            raise FormDefinitionError(f"{name}: values[{i}].label must be a string")
        token = _option_token(value)
        if token in seen:
            raise FormDefinitionError(f"{name}: duplicate value {_show(value)!r} in values")
        seen.add(token)
        out.append({"label": label if label is not None else _show(value), "value": value})
    return out


def _analyse_validate(comp: dict, name: str) -> dict:
    validate = comp.get("validate")
    if validate is None:
        return {}
    if not isinstance(validate, dict):
        raise FormDefinitionError(f"{name}: 'validate' must be an object")
    ctype = comp["type"]
    out: dict[str, Any] = {}
    required = validate.get("required", False)
    if not isinstance(required, bool):
        raise FormDefinitionError(f"{name}: validate.required must be true or false")
    out["required"] = required
    if ctype == "number":
        for prop in ("min", "max"):
            _check_number(name, validate.get(prop), f"validate.{prop}")
            if validate.get(prop) is not None:
                out[prop] = validate[prop]
        if "min" in out and "max" in out and out["min"] > out["max"]:
            raise FormDefinitionError(f"{name}: validate.min is greater than validate.max")
    if ctype in TEXT_TYPES:
        for prop in ("minLength", "maxLength"):
            length = _check_length(name, validate.get(prop), f"validate.{prop}")
            if length is not None:
                out[prop] = length
        if out.get("minLength", 0) > out.get("maxLength", DEFAULT_MAX_TEXT_LENGTH):
            raise FormDefinitionError(f"{name}: validate.minLength is greater than validate.maxLength")
        vtype = validate.get("validationType")
        if vtype not in (None, "", "custom", *VALIDATION_TYPES):
            raise FormDefinitionError(f"{name}: unknown validate.validationType {vtype!r}")
        if vtype in VALIDATION_TYPES:
            out["validationType"] = vtype
        pattern = validate.get("pattern")
        if pattern not in (None, ""):
            if not isinstance(pattern, str):
                raise FormDefinitionError(f"{name}: validate.pattern must be a string")
            if len(pattern) > MAX_PATTERN_LENGTH:
                raise FormDefinitionError(
                    f"{name}: validate.pattern is longer than {MAX_PATTERN_LENGTH} characters"
                )
            try:
                re.compile(pattern)
            except re.error as exc:
                raise FormDefinitionError(
                    f"{name}: validate.pattern is not a valid regular expression ({exc})"
                ) from None
            out["pattern"] = pattern
    return out


def _conditional_hide(comp: dict, name: str) -> str | None:
    conditional = comp.get("conditional")
    if conditional is None:
        return None
    if not isinstance(conditional, dict):
        raise FormDefinitionError(f"{name}: 'conditional' must be an object")
    hide = conditional.get("hide")
    if hide is None or hide == "":
        return None
    if not isinstance(hide, str):
        raise FormDefinitionError(f"{name}: conditional.hide must be a string (FEEL expression)")
    return hide


def _flag(comp: dict, name: str, prop: str) -> bool | str:
    """readonly/disabled: a boolean, or a FEEL expression string."""
    value = comp.get(prop, False)
    if value is None:
        return False
    if not isinstance(value, (bool, str)):
        raise FormDefinitionError(f"{name}: '{prop}' must be a boolean or an expression")
    return value


def _analyse_field(comp: dict, name: str, hidden_by: str | None, prefix: str) -> dict:
    ctype = comp["type"]
    key = comp.get("key")
    if key is None or key == "":
        raise FormDefinitionError(f"{name}: input component of type '{ctype}' has no 'key'")
    if not isinstance(key, str):
        raise FormDefinitionError(f"{name}: 'key' must be a string")
    if key.startswith("_"):
        raise FormDefinitionError(f"{name}: key must not start with an underscore")
    if len(key) > MAX_KEY_LENGTH or not KEY_RE.fullmatch(key):
        raise FormDefinitionError(
            f"{name}: key {key!r} must start with a letter and contain only letters, digits and '_'"
        )
    label = comp.get("label")
    if label is not None and not isinstance(label, str):
        raise FormDefinitionError(f"{name}: 'label' must be a string")

    validate = _analyse_validate(comp, name)
    hide = _conditional_hide(comp, name) or hidden_by
    readonly = _flag(comp, name, "readonly")
    disabled = _flag(comp, name, "disabled")
    spec: dict[str, Any] = {
        "key": key,
        "path": prefix + key,
        "type": ctype,
        "label": label,
        "required": bool(validate.get("required")) and hide is None and readonly is False,
        "values": None,
        "conditional": hide,
        "readonly": readonly,
        "disabled": disabled,
        "validate": validate,
    }
    if ctype in OPTION_TYPES:
        spec["values"] = _analyse_values(comp, name)
    if ctype == "datetime":
        subtype = comp.get("subtype", "date")
        if subtype not in DATETIME_SUBTYPES:
            raise FormDefinitionError(f"{name}: subtype must be one of date, time, datetime")
        spec["subtype"] = subtype
    if ctype == "number":
        increment = comp.get("increment")
        if increment not in (None, ""):
            # form-js stores this as a number or a decimal string ("0.01").
            if not (_is_number(increment) or (isinstance(increment, str) and _DECIMAL_STRING_RE.fullmatch(increment))):
                raise FormDefinitionError(f"{name}: increment must be a number")
            if Decimal(str(increment)) <= 0:
                raise FormDefinitionError(f"{name}: increment must be positive")
            spec["increment"] = increment
        digits = _check_length(name, comp.get("decimalDigits"), "decimalDigits")
        if digits is not None:
            spec["decimalDigits"] = digits
        serialize = comp.get("serializeToString", False)
        if not isinstance(serialize, bool):
            raise FormDefinitionError(f"{name}: serializeToString must be true or false")
        spec["serializeToString"] = serialize
    return spec


def _walk(components: Any, where: str, scope: _Scope, prefix: str, hidden_by: str | None,
          depth: int, analysis: _Analysis) -> None:
    if not isinstance(components, list):
        raise FormDefinitionError(f"{where}: 'components' must be a list")
    if depth > MAX_DEPTH:
        raise FormDefinitionError(f"{where}: components nested deeper than {MAX_DEPTH} levels")
    for index, comp in enumerate(components):
        at = f"{where}[{index}]"
        name = _describe(comp, at)
        analysis.count += 1
        if analysis.count > MAX_COMPONENTS:
            raise FormDefinitionError(f"form has more than {MAX_COMPONENTS} components")
        if not isinstance(comp, dict):
            raise FormDefinitionError(f"{at}: component must be an object")
        ctype = comp.get("type")
        if not isinstance(ctype, str) or not ctype:
            raise FormDefinitionError(f"{name}: missing component 'type'")
        cid = comp.get("id")
        if cid is not None:
            if not isinstance(cid, str):
                raise FormDefinitionError(f"{name}: 'id' must be a string")
            if cid in analysis.ids:
                raise FormDefinitionError(f"{name}: duplicate component id {cid!r}")
            analysis.ids.add(cid)

        if ctype in NO_DATA_TYPES:
            continue
        if ctype in UNSUPPORTED_TYPES:
            raise FormDefinitionError(f"{name}: component type '{ctype}' is not supported")
        if ctype in CONTAINER_TYPES:
            hide = _conditional_hide(comp, name) or hidden_by
            path = comp.get("path")
            child_scope, child_prefix = scope, prefix
            if path not in (None, ""):
                if not isinstance(path, str) or len(path) > MAX_KEY_LENGTH or not KEY_RE.fullmatch(path):
                    raise FormDefinitionError(
                        f"{name}: group path {path!r} must be a single name starting with a letter "
                        "(letters, digits, '_'; dotted paths are not supported)"
                    )
                existing = scope.entries.get(path)
                if isinstance(existing, dict):
                    raise FormDefinitionError(f"{name}: group path {path!r} clashes with field key {path!r}")
                if existing is None:
                    existing = scope.entries[path] = _Scope()
                child_scope, child_prefix = existing, f"{prefix}{path}."
            children = comp.get("components", [])
            _walk(children, f"{name}.components", child_scope, child_prefix, hide, depth + 1, analysis)
            continue
        if ctype not in INPUT_TYPES:
            raise FormDefinitionError(f"{name}: unknown component type '{ctype}'")

        spec = _analyse_field(comp, name, hidden_by, prefix)
        key = spec["key"]
        if key in scope.entries:
            what = "a group path" if isinstance(scope.entries[key], _Scope) else "another field"
            raise FormDefinitionError(f"{name}: duplicate key {key!r} (already used by {what})")
        analysis.fields.append(spec)
        if spec["disabled"] is True:
            # Not submitted by form-js; reserve the key but accept no data for it.
            scope.entries[key] = None
        else:
            scope.entries[key] = spec


def _analyse(form: Any) -> _Analysis:
    if not isinstance(form, dict):
        raise FormDefinitionError("form must be a JSON object")
    ftype = form.get("type", "default")
    if ftype != "default":
        raise FormDefinitionError(f"form 'type' must be \"default\", got {json.dumps(ftype)[:50]}")
    version = form.get("schemaVersion")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise FormDefinitionError("form 'schemaVersion' must be a positive integer")
    if "components" not in form:
        raise FormDefinitionError("form has no 'components' list")
    analysis = _Analysis()
    _walk(form["components"], "components", analysis.root, "", None, 0, analysis)
    return analysis


def _canonical(form: Any) -> str:
    try:
        return json.dumps(form, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise FormDefinitionError(f"form is not JSON-serialisable: {exc}") from None


@lru_cache(maxsize=SCHEMA_CACHE_SIZE)
def _analyse_cached(canonical: str) -> _Analysis:
    return _analyse(json.loads(canonical))


# --------------------------------------------------------------------------- public: form


def parse_form(raw: bytes | str, name: str = "form") -> dict:
    """Parse and structurally validate a form-js JSON document; return it as a dict."""
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_FORM_BYTES:
            raise FormDefinitionError(f"{name}: form is larger than {MAX_FORM_BYTES} bytes")
        try:
            raw = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise FormDefinitionError(f"{name}: form is not valid UTF-8 ({exc.reason})") from None
    if not isinstance(raw, str):
        raise FormDefinitionError(f"{name}: form must be bytes or str")
    if len(raw) > MAX_FORM_BYTES:
        raise FormDefinitionError(f"{name}: form is larger than {MAX_FORM_BYTES} bytes")

    def _no_constant(token: str):
        raise ValueError(f"{token} is not valid JSON")

    try:
        form = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise FormDefinitionError(f"{name}: invalid JSON ({exc})") from None
    try:
        _analyse_cached(_canonical(form))
    except FormDefinitionError as exc:
        raise FormDefinitionError(f"{name}: {exc}") from None
    return form


def form_fields(form: dict) -> list[dict]:
    """Input components in document order, groups flattened.

    Each entry: ``key``, ``path`` (data path: key, or "group_path.key"),
    ``type``, ``label``, ``required`` (as enforced: declared required and not
    conditionally hidden or read-only), ``values`` (list of {"label", "value"}
    or None when free/dynamic), ``conditional`` (FEEL hide expression or None),
    ``readonly``, ``disabled``, ``validate`` (normalised constraints) and, by
    type, ``subtype`` / ``increment`` / ``decimalDigits`` / ``serializeToString``.
    """
    analysis = _analyse_cached(_canonical(form))
    return json.loads(json.dumps(analysis.fields))  # a private copy


# --------------------------------------------------------------------------- marshmallow fields


class _FormField(fields.Field):
    """Base: strict JSON typing, `required` meaning present and non-empty."""

    def __init__(self, spec: dict, **kwargs):
        self.spec = spec
        required = spec["required"]
        super().__init__(
            required=required,
            allow_none=not required,
            error_messages={"required": MISSING_MSG, "null": MISSING_MSG},
            **kwargs,
        )

    # Does "" mean "no value" for this type (as form-js sends for empty inputs)?
    empty_string_is_empty = True

    def _deserialize(self, value, attr, data, **kwargs):
        if self.empty_string_is_empty and isinstance(value, str) and value == "":
            if self.spec["required"]:
                raise ValidationError(MISSING_MSG)
            return "" if self.spec["type"] in TEXT_TYPES else None
        return self.clean(value)

    def clean(self, value):  # pragma: no cover - overridden
        raise NotImplementedError


class _TextField(_FormField):
    def clean(self, value):
        if not isinstance(value, str):
            raise ValidationError("Not a valid string.")
        rules = self.spec["validate"]
        max_length = rules.get("maxLength", DEFAULT_MAX_TEXT_LENGTH)
        if len(value) > max_length:
            raise ValidationError(f"Longer than maximum length {max_length}.")
        if len(value) < rules.get("minLength", 0):
            raise ValidationError(f"Shorter than minimum length {rules['minLength']}.")
        vtype = rules.get("validationType")
        if vtype == "email" and not VALIDATION_TYPES["email"].fullmatch(value):
            raise ValidationError("Not a valid email address.")
        if vtype == "phone" and not VALIDATION_TYPES["phone"].fullmatch(value):
            raise ValidationError("Not a valid phone number.")
        if "pattern" in rules and not re.fullmatch(rules["pattern"], value):
            raise ValidationError("String does not match expected pattern.")
        return value


class _NumberField(_FormField):
    def clean(self, value):
        spec = self.spec
        as_string = spec.get("serializeToString", False)
        if as_string and isinstance(value, str):
            if len(value) > 100 or not _DECIMAL_STRING_RE.fullmatch(value):
                raise ValidationError("Not a valid number.")
            number = Decimal(value)
        elif _is_number(value):
            number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        else:
            raise ValidationError("Not a valid number.")
        rules = spec["validate"]
        if "min" in rules and number < Decimal(str(rules["min"])):
            raise ValidationError(f"Must be greater than or equal to {_show(rules['min'])}.")
        if "max" in rules and number > Decimal(str(rules["max"])):
            raise ValidationError(f"Must be less than or equal to {_show(rules['max'])}.")
        digits = spec.get("decimalDigits")
        if digits is not None and number != number.to_integral_value():
            if number.normalize().as_tuple().exponent < -digits:
                raise ValidationError(f"Must have at most {digits} decimal digits.")
        increment = spec.get("increment")
        if increment is not None:
            try:
                aligned = number % Decimal(str(increment)) == 0
            except InvalidOperation:  # quotient beyond Decimal precision
                aligned = False
            if not aligned:
                raise ValidationError(f"Must be a multiple of {_show(increment)}.")
        if as_string:
            return value if isinstance(value, str) else str(value)
        return value


class _CheckboxField(_FormField):
    empty_string_is_empty = False

    def clean(self, value):
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        if self.spec["required"] and value is not True:
            raise ValidationError("Must be checked.")
        return value


def _options_message(options: list) -> str:
    shown = [_show(o["value"]) for o in options[:MAX_OPTIONS_IN_MESSAGE]]
    more = ", ..." if len(options) > MAX_OPTIONS_IN_MESSAGE else ""
    return f"Must be one of: {', '.join(shown)}{more}."


class _ChoiceField(_FormField):
    """radio / select: one value from the options, compared type-exactly."""

    def __init__(self, spec, **kwargs):
        super().__init__(spec, **kwargs)
        options = spec["values"]
        self.allowed = None if options is None else {_option_token(o["value"]): o["value"] for o in options}

    def clean_one(self, value):
        if not (isinstance(value, (str, bool)) or _is_number(value)):
            message = "Not a valid choice." if self.allowed is None else _options_message(self.spec["values"])
            raise ValidationError(message)
        if self.allowed is None:
            if isinstance(value, str) and len(value) > DEFAULT_MAX_TEXT_LENGTH:
                raise ValidationError(f"Longer than maximum length {DEFAULT_MAX_TEXT_LENGTH}.")
            return value
        token = _option_token(value)
        if token not in self.allowed:
            raise ValidationError(_options_message(self.spec["values"]))
        return self.allowed[token]

    def clean(self, value):
        return self.clean_one(value)


class _MultiChoiceField(_ChoiceField):
    """checklist / taglist: a list of distinct allowed values."""

    empty_string_is_empty = False

    def clean(self, value):
        if not isinstance(value, list):
            raise ValidationError("Not a valid list.")
        limit = MAX_DYNAMIC_ITEMS if self.allowed is None else len(self.allowed)
        if len(value) > limit:
            raise ValidationError(f"Too many items (max {limit}).")
        if not value and self.spec["required"]:
            raise ValidationError(MISSING_MSG)
        out, seen = [], set()
        for item in value:
            cleaned = self.clean_one(item)
            token = _option_token(cleaned)
            if token in seen:
                raise ValidationError(f"Duplicate value: {_show(cleaned)}.")
            seen.add(token)
            out.append(cleaned)
        return out


class _DateTimeField(_FormField):
    def clean(self, value):
        subtype = self.spec.get("subtype", "date")
        if not isinstance(value, str) or len(value) > 40:
            raise ValidationError(f"Not a valid {subtype}.")
        try:
            if subtype == "date":
                if not _DATE_RE.fullmatch(value):
                    raise ValueError
                return date.fromisoformat(value).isoformat()
            if subtype == "time":
                if not _TIME_RE.fullmatch(value):
                    raise ValueError
                time.fromisoformat(value.replace("Z", "+00:00"))
                return value
            match = _DATETIME_RE.fullmatch(value)
            if not match:
                raise ValueError
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return value
        except ValueError:
            raise ValidationError(f"Not a valid {subtype}.") from None


_FIELD_CLASSES = {
    "textfield": _TextField,
    "textarea": _TextField,
    "number": _NumberField,
    "checkbox": _CheckboxField,
    "radio": _ChoiceField,
    "select": _ChoiceField,
    "checklist": _MultiChoiceField,
    "taglist": _MultiChoiceField,
    "datetime": _DateTimeField,
}


class _FormSchema(Schema):
    """Base for generated schemas: unknown keys raise; absent/None values are dropped."""

    class Meta:
        unknown = RAISE

    @post_load
    def _drop_empty(self, data, **kwargs):
        return {k: v for k, v in data.items() if v is not None}


class _GroupNested(fields.Nested):
    """A group with a `path`: its fields live in a nested object."""

    def __init__(self, schema, required: bool):
        super().__init__(
            schema,
            required=required,
            allow_none=not required,
            error_messages={"required": MISSING_MSG, "null": MISSING_MSG},
        )


def _schema_class(scope: _Scope, name: str) -> type[Schema]:
    declared: dict[str, fields.Field] = {}
    for key, entry in scope.entries.items():
        if entry is None:  # disabled field: no data accepted
            continue
        if isinstance(entry, _Scope):
            nested = _schema_class(entry, f"{name}_{key}")
            declared[key] = _GroupNested(nested, required=entry.has_required())
        else:
            declared[key] = _FIELD_CLASSES[entry["type"]](entry)
    return type(name, (_FormSchema,), declared)


@lru_cache(maxsize=SCHEMA_CACHE_SIZE)
def _schema_cached(canonical: str) -> Schema:
    analysis = _analyse_cached(canonical)
    return _schema_class(analysis.root, "FormSubmissionSchema")()


# --------------------------------------------------------------------------- public: submissions


def build_schema(form: dict) -> Schema:
    """The marshmallow schema for submissions of `form` (cached per form content).

    ``schema.load(data)`` returns the cleaned data or raises
    ``marshmallow.ValidationError``; ``schema.validate(data)`` returns the
    (possibly nested) error dict. Prefer `validate_submission`, which also
    limits submission size and flattens error keys.
    """
    return _schema_cached(_canonical(form))


def _count_fields(data: Any) -> int:
    if isinstance(data, dict):
        return sum(1 + _count_fields(v) for v in data.values())
    return 0


def _flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == "_schema":
                path = prefix or "_schema"  # the object itself was wrong
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            for k, v in _flatten_errors(value, path).items():
                out.setdefault(k, []).extend(v)
    elif isinstance(messages, list):
        for item in messages:
            if isinstance(item, (dict, list)):
                for k, v in _flatten_errors(item, prefix).items():
                    out.setdefault(k, []).extend(v)
            else:
                out.setdefault(prefix or "_schema", []).append(str(item))
    else:
        out.setdefault(prefix or "_schema", []).append(str(messages))
    return out


def validate_submission(form: dict, data: dict) -> dict:
    """Validate an untrusted submission against `form`; return the cleaned data.

    Raises `SubmissionInvalid` (``errors``: data path -> messages).
    """
    schema = build_schema(form)
    if not isinstance(data, dict):
        raise SubmissionInvalid({"_schema": ["Invalid input type."]})
    if _count_fields(data) > MAX_SUBMISSION_FIELDS:
        raise SubmissionInvalid({"_schema": [f"Too many fields (max {MAX_SUBMISSION_FIELDS})."]})
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise SubmissionInvalid(_flatten_errors(exc.messages)) from None


def sample_value(field: dict, today: date):
    """A valid value for one field: its first option, its minimum, today, or a short text."""
    if field.get("values"):
        return field["values"][0]["value"]
    if field["type"] == "checkbox":
        return False
    if field["type"] == "number":
        return (field.get("validate") or {}).get("min", 1)
    if field["type"] == "datetime":
        return today.isoformat()
    return "Text d'exemple"


def sample_submission(form: dict, decisions: dict, today: date) -> dict:
    """A submission of `form` that passes its validation: every required or choice field filled with a
    sample value, then `decisions` on top. Scenario tests and the benchmark state only what chooses
    the path."""
    data = {}
    for field in form_fields(form):
        if field.get("disabled"):
            continue
        if field["required"] or field["type"] in ("radio", "select", "checkbox"):
            data[field["key"]] = sample_value(field, today)
    data.update(decisions)
    return data

