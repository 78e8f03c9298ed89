"""Hardened XML parsing for untrusted diagrams."""
from __future__ import annotations

import re

from lxml import etree

MAX_XML_BYTES = 5 * 1024 * 1024
# libxml2 refuses deeper documents unless huge_tree is on (it is off here).
MAX_DEPTH = 256
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_UTF8_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00", b"\xfe\xff", b"\xff\xfe")
_DECLARED_ENCODING = re.compile(rb"""^<\?xml\s[^>]*?encoding\s*=\s*["']([^"']*)["']""")
_XINCLUDE_NS = ("http://www.w3.org/2001/XInclude", "http://www.w3.org/2003/XInclude")


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
        remove_pis=False,  # kept so that they can be refused below
    )


def _check_encoding(content: bytes) -> None:
    """Diagrams are UTF-8 (a UTF-8 byte order mark is tolerated).

    Requiring one ASCII-compatible encoding also keeps the DOCTYPE check below honest:
    in UTF-16 the bytes of `<!DOCTYPE` are not what a byte pattern looks for.
    """
    if content.startswith(_WIDE_BOMS):
        raise UnsafeXml("the file is UTF-16 or UTF-32 (it starts with its byte order mark); save it as UTF-8", 1)
    if b"\x00" in content[:1024]:
        raise UnsafeXml("the file is not UTF-8 text (it has NUL bytes: UTF-16, UTF-32 or binary?)", 1)
    text = content[len(_UTF8_BOM):] if content.startswith(_UTF8_BOM) else content
    declared = _DECLARED_ENCODING.match(text)
    if declared and declared.group(1).decode("ascii", "replace").lower() not in ("utf-8", "utf8"):
        name = declared.group(1).decode("ascii", "replace")[:40]
        raise UnsafeXml(f"the file declares encoding '{name}'; diagrams must be UTF-8", 1)
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as err:
        line = text.count(b"\n", 0, err.start) + 1
        raise UnsafeXml(f"the file is not valid UTF-8 (byte 0x{text[err.start]:02x} on line {line})", line) from None


def parse_xml(content: bytes) -> etree._ElementTree:
    """Parse untrusted XML: UTF-8 only, no DTD, entities, processing instructions or XInclude,
    no network, bounded size and depth."""
    if len(content) > MAX_XML_BYTES:
        raise UnsafeXml(f"file is larger than {MAX_XML_BYTES // (1024 * 1024)} MB")
    _check_encoding(content)
    match = _DOCTYPE.search(content)
    if match:
        line = content.count(b"\n", 0, match.start()) + 1
        raise UnsafeXml("DOCTYPE and ENTITY declarations are not allowed", line)
    try:
        tree = etree.ElementTree(etree.fromstring(content, _parser()))
    except etree.XMLSyntaxError as err:
        if "Excessive depth" in (err.msg or ""):
            raise UnsafeXml(f"elements are nested more than {MAX_DEPTH} levels deep", err.lineno) from None
        raise UnsafeXml(f"malformed XML: {err.msg}", err.lineno) from None
    if tree.docinfo.doctype:
        raise UnsafeXml("DOCTYPE declarations are not allowed", 1)
    for pi in tree.xpath("//processing-instruction()"):
        raise UnsafeXml(f"processing instructions are not allowed (<?{pi.target} …?>)", pi.sourceline)
    for namespace in _XINCLUDE_NS:
        for node in tree.iter(f"{{{namespace}}}*"):
            raise UnsafeXml("XInclude is not allowed (xi:" + etree.QName(node).localname + ")", node.sourceline)
    return tree
