"""Tests for workflows.forms: form-js parsing and submission validation."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from marshmallow import Schema

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workflows.forms import (  # noqa: E402
    FormDefinitionError,
    SubmissionInvalid,
    build_schema,
    form_fields,
    parse_form,
    validate_submission,
)

# A realistic Catalan intake form (as exported by the form-js editor).
FORM_DOC = {
    "type": "default",
    "id": "Form_valoracio_inicial",
    "schemaVersion": 16,
    "executionPlatform": "Camunda Cloud",
    "exporter": {"name": "Camunda Modeler", "version": "5.20.0"},
    "components": [
        {"type": "text", "id": "Text_titol", "text": "# Valoració inicial del cas"},
        {
            "type": "textfield",
            "id": "Field_nom",
            "key": "nom_infant",
            "label": "Nom de l'infant",
            "validate": {"required": True, "maxLength": 80},
        },
        {
            "type": "number",
            "id": "Field_edat",
            "key": "edat",
            "label": "Edat",
            "validate": {"required": True, "min": 0, "max": 17},
        },
        {
            "type": "checkbox",
            "id": "Field_escolaritzat",
            "key": "escolaritzat",
            "label": "Està escolaritzat?",
        },
        {
            "type": "radio",
            "id": "Field_risc",
            "key": "risc_immediat",
            "label": "Hi ha risc immediat?",
            "values": [{"label": "Sí", "value": True}, {"label": "No", "value": False}],
            "validate": {"required": True},
        },
        {
            "type": "select",
            "id": "Field_illa",
            "key": "illa",
            "label": "Illa",
            "values": [
                {"label": "Mallorca", "value": "mallorca"},
                {"label": "Menorca", "value": "menorca"},
                {"label": "Eivissa", "value": "eivissa"},
                {"label": "Formentera", "value": "formentera"},
            ],
            "validate": {"required": True},
        },
        {
            "type": "datetime",
            "subtype": "date",
            "id": "Field_data",
            "key": "data_notificacio",
            "label": "Data de notificació",
            "dateLabel": "Data",
            "validate": {"required": True},
        },
        {
            "type": "checklist",
            "id": "Field_indicadors",
            "key": "indicadors",
            "label": "Indicadors observats",
            "values": [
                {"label": "Absentisme escolar", "value": "absentisme"},
                {"label": "Negligència", "value": "negligencia"},
                {"label": "Maltractament físic", "value": "maltractament_fisic"},
            ],
        },
        {
            "type": "group",
            "id": "Group_tutor",
            "label": "Persona tutora",
            "showOutline": True,
            "components": [
                {
                    "type": "textfield",
                    "id": "Field_tutor",
                    "key": "nom_tutor",
                    "label": "Nom de la persona tutora",
                    "validate": {"required": True},
                },
                {
                    "type": "textfield",
                    "id": "Field_telefon",
                    "key": "telefon_tutor",
                    "label": "Telèfon",
                    "validate": {"pattern": "[0-9]{9}"},
                },
            ],
        },
        {
            "type": "textarea",
            "id": "Field_motiu",
            "key": "motiu_risc",
            "label": "Descriviu el risc",
            "validate": {"required": True},
            "conditional": {"hide": "=risc_immediat = false"},
        },
        {"type": "separator", "id": "Separator_1"},
        {"type": "button", "id": "Button_enviar", "key": "submit", "label": "Enviar", "action": "submit"},
    ],
}

VALID = {
    "nom_infant": "Joana Ferrer",
    "edat": 12,
    "escolaritzat": True,
    "risc_immediat": False,
    "illa": "mallorca",
    "data_notificacio": "2024-03-15",
    "indicadors": ["absentisme", "negligencia"],
    "nom_tutor": "Miquel Ferrer",
    "telefon_tutor": "971123456",
}


@pytest.fixture
def form() -> dict:
    return parse_form(json.dumps(FORM_DOC, ensure_ascii=False).encode("utf-8"), name="valoracio.form")


_ABSENT = object()


def assert_invalid(form: dict, data, field: str) -> list[str]:
    with pytest.raises(SubmissionInvalid) as info:
        validate_submission(form, data)
    assert field in info.value.errors, info.value.errors
    assert all(isinstance(m, str) for msgs in info.value.errors.values() for m in msgs)
    return info.value.errors[field]


def with_changes(**changes) -> dict:
    data = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is _ABSENT:
            data.pop(key, None)
        else:
            data[key] = value
    return data


# --------------------------------------------------------------------------- parsing


def test_parse_form_returns_the_document(form):
    assert form == FORM_DOC
    assert parse_form(json.dumps(FORM_DOC)) == FORM_DOC  # str accepted too


def test_form_fields_flattens_groups_and_skips_presentation(form):
    fields = form_fields(form)
    assert [f["key"] for f in fields] == [
        "nom_infant", "edat", "escolaritzat", "risc_immediat", "illa",
        "data_notificacio", "indicadors", "nom_tutor", "telefon_tutor", "motiu_risc",
    ]
    by_key = {f["key"]: f for f in fields}
    assert by_key["nom_infant"]["label"] == "Nom de l'infant"
    assert by_key["nom_infant"]["required"] is True
    assert by_key["escolaritzat"]["required"] is False
    assert by_key["risc_immediat"]["values"] == [
        {"label": "Sí", "value": True}, {"label": "No", "value": False},
    ]
    assert by_key["nom_infant"]["values"] is None
    assert by_key["data_notificacio"]["subtype"] == "date"
    # Hidden-when fields are never enforced as required (FEEL is not evaluated).
    assert by_key["motiu_risc"]["required"] is False
    assert by_key["motiu_risc"]["conditional"] == "=risc_immediat = false"
    # Returned list is a copy: mutating it does not affect later calls.
    fields[0]["key"] = "x"
    assert form_fields(form)[0]["key"] == "nom_infant"


def test_build_schema_is_a_cached_marshmallow_schema(form):
    schema = build_schema(form)
    assert isinstance(schema, Schema)
    assert build_schema(copy.deepcopy(form)) is schema
    errors = schema.validate({**VALID, "intrus": 1})
    assert errors == {"intrus": ["Unknown field."]}
    assert schema.validate(VALID) == {}


# --------------------------------------------------------------------------- valid submissions


def test_valid_submission_is_cleaned(form):
    cleaned = validate_submission(form, copy.deepcopy(VALID))
    assert cleaned == VALID
    assert isinstance(cleaned["edat"], int)
    assert cleaned["risc_immediat"] is False
    assert cleaned["escolaritzat"] is True


def test_optional_fields_absent_or_empty(form):
    data = with_changes(escolaritzat=_ABSENT, indicadors=_ABSENT, telefon_tutor=_ABSENT)
    cleaned = validate_submission(form, data)
    assert "escolaritzat" not in cleaned
    assert "indicadors" not in cleaned
    assert "telefon_tutor" not in cleaned
    # form-js sends "" for an empty text field and null for other empty inputs
    cleaned = validate_submission(form, with_changes(telefon_tutor="", indicadors=[]))
    assert cleaned["telefon_tutor"] == ""
    assert cleaned["indicadors"] == []


def test_conditionally_hidden_required_field_is_optional_but_typed(form):
    assert "motiu_risc" not in validate_submission(form, with_changes(risc_immediat=True))
    cleaned = validate_submission(form, with_changes(risc_immediat=True, motiu_risc="Violència a casa"))
    assert cleaned["motiu_risc"] == "Violència a casa"
    assert_invalid(form, with_changes(motiu_risc=42), "motiu_risc")


def test_float_number_accepted():
    doc = {"components": [{"type": "number", "key": "pes", "validate": {"min": 0.5, "max": 150}}]}
    assert validate_submission(doc, {"pes": 31.5}) == {"pes": 31.5}
    assert validate_submission(doc, {"pes": 150}) == {"pes": 150}
    assert validate_submission(doc, {"pes": None}) == {}


# --------------------------------------------------------------------------- invalid submissions


@pytest.mark.parametrize(
    "field", ["nom_infant", "edat", "risc_immediat", "illa", "data_notificacio", "nom_tutor"]
)
def test_missing_required_field(form, field):
    messages = assert_invalid(form, with_changes(**{field: _ABSENT}), field)
    assert messages == ["Missing data for required field."]


@pytest.mark.parametrize("field", ["nom_infant", "illa", "data_notificacio", "edat", "risc_immediat"])
def test_empty_or_null_required_value_counts_as_missing(form, field):
    assert assert_invalid(form, with_changes(**{field: ""}), field) == ["Missing data for required field."]
    assert assert_invalid(form, with_changes(**{field: None}), field) == ["Missing data for required field."]


@pytest.mark.parametrize(
    "field, value",
    [
        ("nom_infant", 123),
        ("nom_infant", ["Joana"]),
        ("edat", "12"),          # JSON clients send numbers, not numeric strings
        ("edat", True),          # bool is not a number
        ("edat", [12]),
        ("escolaritzat", "true"),
        ("escolaritzat", 1),
        ("escolaritzat", ""),
        ("risc_immediat", "false"),
        ("risc_immediat", 0),    # type-exact: 0 is not False
        ("illa", 1),
        ("illa", {"value": "mallorca"}),
        ("data_notificacio", 20240315),
        ("indicadors", "absentisme"),
        ("indicadors", [1]),
        ("indicadors", {"absentisme": True}),
        ("motiu_risc", False),
    ],
)
def test_wrong_type(form, field, value):
    assert_invalid(form, with_changes(**{field: value}), field)


def test_wrong_type_messages(form):
    assert assert_invalid(form, with_changes(edat="12"), "edat") == ["Not a valid number."]
    assert assert_invalid(form, with_changes(escolaritzat="sí"), "escolaritzat") == ["Not a valid boolean."]
    assert assert_invalid(form, with_changes(nom_infant=5), "nom_infant") == ["Not a valid string."]
    assert assert_invalid(form, with_changes(indicadors="x"), "indicadors") == ["Not a valid list."]


@pytest.mark.parametrize("value", [-1, 18, 17.5, 10**30])
def test_number_out_of_range(form, value):
    messages = assert_invalid(form, with_changes(edat=value), "edat")
    assert messages[0].startswith("Must be ")


def test_number_range_messages(form):
    assert assert_invalid(form, with_changes(edat=-1), "edat") == ["Must be greater than or equal to 0."]
    assert assert_invalid(form, with_changes(edat=18), "edat") == ["Must be less than or equal to 17."]


def test_value_not_in_options(form):
    assert assert_invalid(form, with_changes(illa="cabrera"), "illa") == [
        "Must be one of: mallorca, menorca, eivissa, formentera."
    ]
    assert assert_invalid(form, with_changes(risc_immediat="si"), "risc_immediat") == [
        "Must be one of: true, false."
    ]
    assert_invalid(form, with_changes(indicadors=["absentisme", "pobresa"]), "indicadors")


def test_checklist_rejects_duplicates(form):
    assert_invalid(form, with_changes(indicadors=["absentisme", "absentisme"]), "indicadors")


def test_unknown_field(form):
    errors = assert_invalid(form, with_changes(es_admin=True), "es_admin")
    assert errors == ["Unknown field."]
    # presentation components (button key "submit") carry no data
    assert_invalid(form, with_changes(submit=True), "submit")


@pytest.mark.parametrize("data", [None, [], "nom_infant=Joana", 42, [VALID]])
def test_non_dict_submission(form, data):
    assert_invalid(form, data, "_schema")


@pytest.mark.parametrize("value", ["2024-02-30", "2024-13-01", "15/03/2024", "2024-3-5", "2024-03-15T10:00", "avui"])
def test_invalid_date(form, value):
    assert assert_invalid(form, with_changes(data_notificacio=value), "data_notificacio") == ["Not a valid date."]


def test_string_too_long(form):
    messages = assert_invalid(form, with_changes(nom_infant="a" * 81), "nom_infant")
    assert messages == ["Longer than maximum length 80."]
    # default cap of 10,000 characters without validate.maxLength
    assert_invalid(form, with_changes(nom_tutor="a" * 10_001), "nom_tutor")
    assert validate_submission(form, with_changes(nom_tutor="a" * 10_000))["nom_tutor"] == "a" * 10_000


def test_pattern_is_full_match(form):
    assert_invalid(form, with_changes(telefon_tutor="97112345"), "telefon_tutor")
    assert_invalid(form, with_changes(telefon_tutor="971123456x"), "telefon_tutor")


def test_several_errors_reported_together(form):
    with pytest.raises(SubmissionInvalid) as info:
        validate_submission(form, with_changes(edat=99, illa="x", nom_infant=_ABSENT, extra=1))
    assert set(info.value.errors) == {"edat", "illa", "nom_infant", "extra"}
    assert "edat" in str(info.value)


def test_too_many_fields(form):
    data = with_changes(**{f"camp{i}": i for i in range(100)})
    assert assert_invalid(form, data, "_schema") == ["Too many fields (max 100)."]


# --------------------------------------------------------------------------- groups with a path


GROUP_PATH_FORM = {
    "type": "default",
    "components": [
        {"type": "textfield", "key": "nom"},
        {
            "type": "group",
            "path": "adreca",
            "components": [
                {"type": "textfield", "key": "carrer", "validate": {"required": True}},
                {"type": "textfield", "key": "municipi"},
            ],
        },
    ],
}


def test_group_with_path_nests_data():
    form = parse_form(json.dumps(GROUP_PATH_FORM))
    assert [f["path"] for f in form_fields(form)] == ["nom", "adreca.carrer", "adreca.municipi"]
    cleaned = validate_submission(form, {"nom": "A", "adreca": {"carrer": "Sant Miquel 3"}})
    assert cleaned == {"nom": "A", "adreca": {"carrer": "Sant Miquel 3"}}
    assert_invalid(form, {"adreca": {}}, "adreca.carrer")
    assert_invalid(form, {"adreca": {"carrer": "x", "pis": 2}}, "adreca.pis")
    assert_invalid(form, {"adreca": "Sant Miquel 3"}, "adreca")
    assert_invalid(form, {"nom": "A"}, "adreca")  # group holds a required field
    assert_invalid(form, {"adreca": {"carrer": "x"}, "carrer": "y"}, "carrer")  # not flattened


# --------------------------------------------------------------------------- other component types


def test_other_types():
    doc = {
        "components": [
            {"type": "datetime", "subtype": "time", "key": "hora"},
            {"type": "datetime", "subtype": "datetime", "key": "moment"},
            {"type": "taglist", "key": "etiquetes",
             "values": [{"label": "U", "value": 1}, {"label": "Dos", "value": "2"}]},
            {"type": "select", "key": "municipi", "valuesKey": "municipis"},
            {"type": "checkbox", "key": "accepta", "validate": {"required": True}},
            {"type": "textfield", "key": "correu", "validate": {"validationType": "email"}},
            {"type": "number", "key": "import_", "increment": "0.01", "decimalDigits": 2},
        ]
    }
    form = parse_form(json.dumps(doc))
    ok = {
        "hora": "09:30", "moment": "2024-03-15T09:30+01:00", "etiquetes": [1, "2"],
        "municipi": "Palma", "accepta": True, "correu": "a@b.cat", "import_": 12.25,
    }
    assert validate_submission(form, ok) == ok
    assert validate_submission(form, {**ok, "etiquetes": [1.0]})["etiquetes"] == [1]
    assert_invalid(form, {**ok, "hora": "25:00"}, "hora")
    assert_invalid(form, {**ok, "moment": "2024-03-15"}, "moment")
    assert_invalid(form, {**ok, "etiquetes": ["1"]}, "etiquetes")  # "1" != 1
    assert_invalid(form, {**ok, "etiquetes": [True]}, "etiquetes")  # True != 1
    assert_invalid(form, {**ok, "municipi": ["Palma"]}, "municipi")
    assert assert_invalid(form, {**ok, "accepta": False}, "accepta") == ["Must be checked."]
    assert_invalid(form, {**ok, "correu": "no-es-correu"}, "correu")
    assert_invalid(form, {**ok, "import_": 12.255}, "import_")


def test_disabled_field_accepts_no_data():
    doc = {"components": [{"type": "textfield", "key": "codi", "disabled": True},
                          {"type": "textfield", "key": "nom"}]}
    form = parse_form(json.dumps(doc))
    assert form_fields(form)[0]["disabled"] is True
    assert validate_submission(form, {"nom": "x"}) == {"nom": "x"}
    assert_invalid(form, {"codi": "x"}, "codi")


# --------------------------------------------------------------------------- invalid forms


def _form(*components, **top) -> str:
    return json.dumps({"type": "default", "schemaVersion": 16, "components": list(components), **top})


def _definition_error(raw) -> str:
    with pytest.raises(FormDefinitionError) as info:
        parse_form(raw, name="dolent.form")
    message = str(info.value)
    assert message.startswith("dolent.form: ")
    return message


def test_duplicate_key():
    msg = _definition_error(_form(
        {"type": "textfield", "key": "nom"},
        {"type": "group", "components": [{"type": "number", "id": "Field_2", "key": "nom"}]},
    ))
    assert "duplicate key 'nom'" in msg


def test_same_key_in_different_paths_is_fine():
    parse_form(_form(
        {"type": "textfield", "key": "nom"},
        {"type": "group", "path": "tutor", "components": [{"type": "textfield", "key": "nom"}]},
    ))


def test_missing_key_names_component():
    msg = _definition_error(_form({"type": "textfield", "id": "Field_sense_clau", "label": "Nom"}))
    assert "Field_sense_clau" in msg and "no 'key'" in msg
    msg = _definition_error(_form({"type": "number", "key": ""}))
    assert "no 'key'" in msg


@pytest.mark.parametrize("key", ["_intern", "1nom", "nom-complet", "nom complet", "a.b", "niño"])
def test_bad_key(key):
    msg = _definition_error(_form({"type": "textfield", "key": key}))
    assert repr(key) in msg or "underscore" in msg
    if key.startswith("_"):
        assert "underscore" in msg


def test_bad_json():
    assert "invalid JSON" in _definition_error('{"components": [')
    assert "not valid UTF-8" in _definition_error(b"\xff\xfe{}")
    assert "invalid JSON" in _definition_error('{"components": [], "x": NaN}')


@pytest.mark.parametrize("components", [{"a": 1}, "textfield", None, 3])
def test_components_not_a_list(components):
    assert "'components' must be a list" in _definition_error(json.dumps({"components": components}))


def test_structural_errors():
    assert "no 'components'" in _definition_error(json.dumps({"type": "default"}))
    assert "JSON object" in _definition_error("[]")
    assert "must be an object" in _definition_error(_form("textfield"))
    assert "unknown component type 'colorpicker'" in _definition_error(_form({"type": "colorpicker", "key": "c"}))
    assert "not supported" in _definition_error(_form({"type": "dynamiclist", "path": "fills", "components": []}))
    assert "'values' is required" in _definition_error(_form({"type": "select", "key": "s"}))
    assert "non-empty list" in _definition_error(_form({"type": "radio", "key": "r", "values": []}))
    assert "values[1]" in _definition_error(_form({"type": "radio", "key": "r",
                                                   "values": [{"value": "a"}, {"label": "B"}]}))
    assert "values[0].value" in _definition_error(_form({"type": "select", "key": "s",
                                                         "values": [{"label": "A", "value": None}]}))
    assert "duplicate value" in _definition_error(_form({"type": "checklist", "key": "c",
                                                        "values": [{"value": "a"}, {"value": "a"}]}))
    assert "subtype" in _definition_error(_form({"type": "datetime", "key": "d", "subtype": "week"}))
    assert "duplicate component id" in _definition_error(_form({"type": "textfield", "key": "a", "id": "F"},
                                                              {"type": "textfield", "key": "b", "id": "F"}))


def test_bool_and_number_option_values_are_distinct():
    parse_form(_form({"type": "radio", "key": "r", "values": [{"value": True}, {"value": 1}, {"value": "1"}]}))


@pytest.mark.parametrize("validate, problem", [
    ({"min": "0"}, "validate.min must be a number"),
    ({"max": True}, "validate.max must be a number"),
    ({"min": 10, "max": 1}, "greater than validate.max"),
    ({"required": "yes"}, "validate.required"),
])
def test_bad_number_validation(validate, problem):
    msg = _definition_error(_form({"type": "number", "key": "edat", "validate": validate}))
    assert "'edat'" in msg and problem in msg


@pytest.mark.parametrize("validate, problem", [
    ({"pattern": "a" * 201}, "longer than 200"),
    ({"pattern": "(unclosed"}, "not a valid regular expression"),
    ({"maxLength": -1}, "validate.maxLength"),
    ({"maxLength": "10"}, "validate.maxLength"),
    ({"validationType": "iban"}, "validationType"),
])
def test_bad_text_validation(validate, problem):
    msg = _definition_error(_form({"type": "textfield", "key": "nom", "validate": validate}))
    assert "'nom'" in msg and problem in msg


def test_build_schema_rejects_invalid_form_dict():
    with pytest.raises(FormDefinitionError):
        build_schema({"components": [{"type": "textfield"}]})
    with pytest.raises(FormDefinitionError):
        validate_submission({"components": "no"}, {})
