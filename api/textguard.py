"""Text that cannot be stored is refused where requests come in.

PostgreSQL text and JSON cannot hold U+0000, and no database driver can encode an unpaired surrogate
("\\ud800" is valid JSON but not UTF-8). Such a character in an id, a filter or any field of a body
would otherwise reach a query and fail there as a 500. No legitimate input contains them: an id in the
path is then a 404 (nothing can have it), anything else a 422 that names the field.
"""
from __future__ import annotations

import re

from flask import Flask, request

from engine.errors import Invalid, NotFound

MESSAGE = "must not contain the NUL character or unpaired surrogates"
# How such characters look inside a JSON body; only then is the parsed body searched.
_JSON_SUSPECT = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]")


def unstorable(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bad_fields(value, path: str, found: dict[str, list[str]]) -> None:
    if isinstance(value, str):
        if unstorable(value):
            found[path or "_schema"] = [MESSAGE]
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if unstorable(str(key)):
                found[(path + "." if path else "") + repr(key)] = [MESSAGE]
                continue
            _bad_fields(item, name, found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _bad_fields(item, f"{path}.{index}" if path else str(index), found)


def register(app: Flask) -> None:
    @app.before_request
    def _refuse_unstorable_text():
        if any(isinstance(v, str) and unstorable(v) for v in (request.view_args or {}).values()):
            raise NotFound("not found")
        found: dict[str, list[str]] = {}
        for key, values in request.args.lists():
            if unstorable(key) or any(unstorable(v) for v in values):
                found[repr(key) if unstorable(key) else key] = [MESSAGE]
        if request.is_json and _JSON_SUSPECT.search(request.get_data(cache=True)):
            _bad_fields(request.get_json(silent=True), "", found)
        if request.mimetype == "multipart/form-data":
            for upload in request.files.getlist("files"):
                if unstorable(upload.filename or ""):
                    found["files"] = [f"file names {MESSAGE}"]
        if found:
            raise Invalid(found)
