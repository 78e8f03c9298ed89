"""Hardened XML parsing for untrusted diagrams."""
from __future__ import annotations

import re

from lxml import etree

MAX_XML_BYTES = 5 * 1024 * 1024
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class UnsafeXml(ValueError):
    def __init__(self, message: str, line: int | None = None):
        self.line = line
        super().__init__(message)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )


def parse_xml(content: bytes) -> etree._ElementTree:
    """Parse untrusted XML: no DTD, no entities, no network, bounded size."""
    if len(content) > MAX_XML_BYTES:
        raise UnsafeXml(f"file is larger than {MAX_XML_BYTES // (1024 * 1024)} MB")
    match = _DOCTYPE.search(content)
    if match:
        line = content.count(b"\n", 0, match.start()) + 1
        raise UnsafeXml("DOCTYPE and ENTITY declarations are not allowed", line)
    try:
        tree = etree.ElementTree(etree.fromstring(content, _parser()))
    except etree.XMLSyntaxError as err:
        raise UnsafeXml(f"malformed XML: {err.msg}", err.lineno) from None
    if tree.docinfo.doctype:
        raise UnsafeXml("DOCTYPE declarations are not allowed", 1)
    return tree
