"""Hostile XML sent to the deploy API: each one is a clear 4xx problem+json and deploys nothing.

Every attack goes to POST /api/definitions/validate and POST /api/definitions as the analyst.
Each test also checks that the server keeps serving and that the answer came in bounded time,
and the entity/DTD attacks point at a trap HTTP server that must never be called.
"""
from __future__ import annotations

import http.server
import threading

import pytest

from .deploy_http import MAX_SECONDS, assert_problem_json, deploy_client

FORM = b"""{"type": "default", "id": "Form_valorar", "schemaVersion": 16, "components": [
 {"type": "radio", "key": "risc", "label": "Hi ha risc?", "id": "Field_risc", "validate": {"required": true},
  "values": [{"label": "S\\u00ed", "value": true}, {"label": "No", "value": false}]}]}"""

DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
# A valid diagram: each attack below changes one thing in it, so the refusal is the attack's.
DIAGRAM = """<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs" targetNamespace="http://camins">
  <bpmn:process id="atac" name="Atac" isExecutable="true">
    <bpmn:laneSet id="lanes">
      <bpmn:lane id="lane_ts" name="Treballador/a social">
        <bpmn:flowNodeRef>inici</bpmn:flowNodeRef><bpmn:flowNodeRef>valorar</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>decidir</bpmn:flowNodeRef><bpmn:flowNodeRef>fi</bpmn:flowNodeRef>
      </bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="inici" name="Inici"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="valorar" name="Valorar">
      <bpmn:documentation>DOC</bpmn:documentation>
      <bpmn:extensionElements>EXTENSIONS<spiffworkflow:properties>
        <spiffworkflow:property name="form" value="forms/valorar.form" />
      </spiffworkflow:properties></bpmn:extensionElements>
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:businessRuleTask id="decidir" name="Decidir">
      <bpmn:extensionElements><spiffworkflow:calledDecisionId>nivell</spiffworkflow:calledDecisionId>
      </bpmn:extensionElements>
      <bpmn:incoming>f2</bpmn:incoming><bpmn:outgoing>f3</bpmn:outgoing>
    </bpmn:businessRuleTask>
    <bpmn:endEvent id="fi" name="Fi"><bpmn:incoming>f3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="inici" targetRef="valorar" />
    <bpmn:sequenceFlow id="f2" sourceRef="valorar" targetRef="decidir" />
    <bpmn:sequenceFlow id="f3" sourceRef="decidir" targetRef="fi" />
  </bpmn:process>
</bpmn:definitions>
"""
DMN = """<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="dmn_nivell" name="Nivell"
  namespace="http://camins">
  <decision id="nivell" name="Nivell">
    <decisionTable id="taula" hitPolicy="FIRST">
      <input id="in_risc" label="Risc"><inputExpression id="ie_risc" typeRef="boolean"><text>risc</text>
      </inputExpression></input>
      <input id="in_edat" label="Edat"><inputExpression id="ie_edat" typeRef="integer">
        <text>age_in_years(data_naixement)</text></inputExpression></input>
      <output id="out_nivell" label="Nivell" name="nivell" typeRef="string" />
      <rule id="regla_alt">
        <inputEntry id="alt_risc"><text>True</text></inputEntry>
        <inputEntry id="alt_edat"><text>&lt; 3</text></inputEntry>
        <outputEntry id="alt_out"><text>'alt'</text></outputEntry>
      </rule>
      <rule id="regla_baix">
        <inputEntry id="baix_risc"><text>-</text></inputEntry>
        <inputEntry id="baix_edat"><text>-</text></inputEntry>
        <outputEntry id="baix_out"><text>'baix'</text></outputEntry>
      </rule>
    </decisionTable>
  </decision>
</definitions>
"""


def diagram(head: str = DECLARATION, doc: str = "Valoració inicial", extensions: str = "",
            before_root: str = "", **replace: str) -> str:
    text = head + before_root + DIAGRAM.replace("DOC", doc).replace("EXTENSIONS", extensions)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def bundle(bpmn: str | bytes, dmn: str | bytes | None = DMN, name: str = "atac.bpmn") -> list:
    files = [(name, bpmn), ("forms/valorar.form", FORM)]
    return files + ([("nivell.dmn", dmn)] if dmn is not None else [])


class Trap(http.server.BaseHTTPRequestHandler):
    """Any request here means the parser fetched an external entity or DTD."""

    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        Trap.hits.append(self.path)
        body = b'<!ENTITY % leak "x">'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def trap():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(database_url):
    with deploy_client(database_url) as deployer:
        yield deployer


def test_the_base_diagram_deploys(client):
    """The control: without the attack, the same bundle deploys (so each refusal below is the attack's)."""
    sent = client.send(bundle(diagram()))
    assert sent.status == 201, sent.response.text
    assert ("atac", sent.response.json()["version"]) in client.deployed()


def refused(client, files, fragment: str, status: int = 422, element_id: str | None = None) -> list[dict]:
    """Both endpoints refuse the bundle with a message containing `fragment`; nothing is deployed."""
    before = client.deployed()
    problems = []
    for sent in client.both(files):
        body = assert_problem_json(sent, status)
        found = body.get("problems") or [{"message": body.get("detail", ""), "element_id": None, "file": None}]
        assert any(fragment in p["message"] and (element_id is None or p["element_id"] == element_id)
                   for p in found), found
        assert all(p["file"] for p in body.get("problems", [])), found
        problems = found
    assert client.deployed() == before
    client.still_serving()
    return problems


BILLION_LAUGHS = DECLARATION + """<!DOCTYPE bpmn:definitions [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
"""


# --------------------------------------------------------------------------- entities and DTDs
def test_xxe_file_entity_is_refused_and_reads_nothing(client, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-MARKER-7f3a")
    head = DECLARATION + f'<!DOCTYPE bpmn:definitions [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
    files = bundle(diagram(head=head, doc="&xxe;", **{'name="Valorar"': 'name="&xxe;"'}))
    refused(client, files, "DOCTYPE and ENTITY declarations are not allowed")
    for sent in client.both(files):
        assert "SECRET-MARKER" not in sent.response.text


def test_xxe_parameter_entity_is_refused_and_fetches_nothing(client, trap):
    Trap.hits.clear()
    head = DECLARATION + (f'<!DOCTYPE bpmn:definitions [<!ENTITY % remote SYSTEM "{trap}/evil.dtd"> %remote;'
                          f' <!ENTITY % file SYSTEM "file:///etc/hostname">]>\n')
    refused(client, bundle(diagram(head=head)), "DOCTYPE and ENTITY declarations are not allowed")
    assert Trap.hits == []


def test_billion_laughs_is_refused_quickly(client):
    problems = refused(client, bundle(diagram(head=BILLION_LAUGHS, doc="&lol9;")), "DOCTYPE")
    assert problems[0]["line"] == 2


@pytest.mark.parametrize("doctype", [
    'SYSTEM "{trap}/bpmn.dtd"',
    'PUBLIC "-//OMG//DTD BPMN 2.0//EN" "{trap}/bpmn.dtd"',
    'SYSTEM "file:///etc/passwd"',
])
def test_external_dtd_is_refused_and_never_fetched(client, trap, doctype):
    Trap.hits.clear()
    head = DECLARATION + "<!DOCTYPE bpmn:definitions " + doctype.format(trap=trap) + ">\n"
    refused(client, bundle(diagram(head=head)), "DOCTYPE")
    assert Trap.hits == []


def test_an_undeclared_entity_is_malformed_xml(client):
    refused(client, bundle(diagram(doc="&xxe;")), "malformed XML: Entity 'xxe' not defined")


def test_doctype_in_utf16_does_not_slip_past_the_byte_check(client, trap):
    """In UTF-16 `<!DOCTYPE` is not the byte pattern a scanner looks for; the encoding is refused first."""
    Trap.hits.clear()
    head = (f'<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE bpmn:definitions [<!ENTITY % remote SYSTEM '
            f'"{trap}/evil.dtd"> %remote; <!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n')
    for encoding in ("utf-16", "utf-16-be"):  # with and without a byte order mark
        content = diagram(head=head, doc="&xxe;").encode(encoding)
        refused(client, bundle(content), "UTF-16" if encoding == "utf-16" else "NUL bytes")
    assert Trap.hits == []


# --------------------------------------------------------------------------- size and depth
def test_a_50_mb_upload_is_stopped_by_the_upload_limit(client):
    # Built in memory: 50 MB of tasks inside an otherwise valid diagram.
    filler = "".join(f'<bpmn:task id="t{i}" name="{"x" * 80}" />' for i in range(1000))
    repeats = 50 * 1024 * 1024 // len(filler) + 1
    content = diagram(**{"</bpmn:process>": filler * repeats + "</bpmn:process>"}).encode()
    assert len(content) > 50 * 1024 * 1024
    before = client.deployed()
    sent = client.send(bundle(content))
    body = assert_problem_json(sent, 413)
    assert "larger than this server accepts (25 MB)" in body["detail"]
    assert client.deployed() == before
    client.still_serving()


def test_a_file_over_5_mb_is_refused_with_its_size(client):
    padding = "<!--" + "x" * (6 * 1024 * 1024) + "-->"
    refused(client, bundle(diagram(before_root=padding)), "file is larger than 5 MB")


@pytest.mark.parametrize("where", ["extensions", "document"])
def test_ten_thousand_nested_elements_are_refused(client, where):
    deep = "<x:n xmlns:x='urn:deep'>" * 10_000 + "</x:n>" * 10_000
    content = diagram(extensions=deep) if where == "extensions" else DECLARATION + deep
    problems = refused(client, bundle(content), "nested more than 256 levels deep")
    assert problems[0]["file"] == "atac.bpmn"


# --------------------------------------------------------------------------- not BPMN, not DMN
SVG = DECLARATION + '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><circle r="4"/></svg>'
XHTML = DECLARATION + ('<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Camins</title></head>'
                       '<body><p>Not a diagram</p></body></html>')


@pytest.mark.parametrize("content, fragment", [
    (SVG, "not a BPMN 2.0 document"),
    (XHTML, "not a BPMN 2.0 document"),
    (DMN, "is a DMN document: send it as a .dmn file"),
    ("<bpmn:definitions xmlns:bpmn='http://www.omg.org/spec/BPMN/20100524/MODEL'>", "malformed XML"),
    ("", "malformed XML: Document is empty"),
    ("just text, not XML", "malformed XML"),
    ("<bpmn:process xmlns:bpmn='http://www.omg.org/spec/BPMN/20100524/MODEL' id='p'/>", "root must be"),
])
def test_non_bpmn_sent_as_bpmn_is_refused(client, content, fragment):
    refused(client, bundle(content, dmn=None), fragment)


@pytest.mark.parametrize("content, fragment", [
    (diagram(), "is a BPMN document: send it as a .bpmn file"),
    (SVG, "not a DMN document"),
    ('<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="d" name="d" namespace="n"/>',
     "has no decision"),
])
def test_non_dmn_sent_as_dmn_is_refused(client, content, fragment):
    refused(client, bundle(diagram(), dmn=content), fragment)


def test_a_binary_file_is_refused(client):
    refused(client, bundle(bytes(range(256)) * 4), "not UTF-8 text")


# --------------------------------------------------------------------------- broken decision tables
def _dmn(**replace: str) -> str:
    text = DMN
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("dmn, element_id, fragment", [
    (_dmn(**{'<inputEntry id="alt_edat"><text>&lt; 3</text></inputEntry>': ""}),
     "regla_alt", "rule has 1 input cell(s) but the table has 2 input(s)"),
    (_dmn(**{'<inputEntry id="baix_edat"><text>-</text></inputEntry>':
             '<inputEntry id="baix_edat"><text>-</text></inputEntry>'
             '<inputEntry id="sobra"><text>-</text></inputEntry>'}),
     "regla_baix", "rule has 3 input cell(s) but the table has 2 input(s)"),
    (_dmn(**{'<output id="out_nivell" label="Nivell" name="nivell" typeRef="string" />':
             '<output id="out_nivell" label="Nivell" name="nivell" typeRef="string" />'
             '<output id="out_motiu" name="motiu" typeRef="string" />'}),
     "regla_alt", "rule has 1 output cell(s) but the table has 2 output(s)"),
    (_dmn(**{' name="nivell" typeRef': ' typeRef'}), "out_nivell", "output has no name"),
    (_dmn(**{' name="nivell" typeRef': ' name="nivell del cas" typeRef'}), "out_nivell",
     "output name 'nivell del cas' is not a plain identifier"),
    (_dmn(**{"&lt; 3": "[1..3]"}), "alt_edat", "DMN cell rejected"),
    (_dmn(**{"&lt; 3": "import os"}), "alt_edat", "DMN cell rejected"),
    (_dmn(**{"'alt'": "alt alt"}), "alt_out", "DMN cell rejected"),
    (_dmn(**{"'alt'": "().__class__"}), "alt_out", "DMN cell rejected"),
    (_dmn(**{"<text>risc</text>": "<text></text>"}), "ie_risc", "empty expression"),
    (_dmn(**{'hitPolicy="FIRST"': 'hitPolicy="COLLECT" aggregation="SUM"'}), "taula", "aggregation"),
    (_dmn(**{'hitPolicy="FIRST"': 'hitPolicy="RULE ORDER"'}), "taula", "hit policy 'RULE ORDER' is not supported"),
    (DMN.split("<decisionTable")[0] + "<literalExpression id='lit'><text>1</text></literalExpression>"
     "</decision></definitions>", "nivell", "has no decision table"),
    (_dmn(**{"</definitions>": '<decision id="segona" name="Segona"><decisionTable id="t2"><input id="i2">'
             '<inputExpression id="e2"><text>x</text></inputExpression></input><output id="o2" name="y"/>'
             '</decisionTable></decision></definitions>'}), None, "only one decision"),
    (_dmn(**{"https://www.omg.org/spec/DMN/20191111/MODEL/": "http://example.com/not-dmn"}), None,
     "not a DMN document"),
])
def test_a_broken_decision_table_is_refused_naming_the_element(client, dmn, element_id, fragment):
    refused(client, bundle(diagram(), dmn=dmn), fragment, element_id=element_id)


def test_a_bpmn_whose_decision_is_missing_is_refused(client):
    refused(client, bundle(diagram(), dmn=None), "calls decision 'nivell', which no .dmn file in the bundle defines",
            element_id="decidir")


def test_a_business_rule_task_without_a_decision_is_refused(client):
    content = diagram(**{"<spiffworkflow:calledDecisionId>nivell</spiffworkflow:calledDecisionId>": ""})
    refused(client, bundle(content), "has no spiffworkflow:calledDecisionId", element_id="decidir")


def test_the_same_decision_in_two_files_is_refused(client):
    files = bundle(diagram()) + [("nivell_bis.dmn", DMN.replace("'alt'", "'molt alt'"))]
    refused(client, files, "decision 'nivell' is defined in nivell.dmn and in nivell_bis.dmn")


# --------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("encode, fragment", [
    (lambda text: text.replace("UTF-8", "UTF-16").encode("utf-16"), "UTF-16 or UTF-32"),
    (lambda text: text.replace("UTF-8", "UTF-16").encode("utf-16-le"), "NUL bytes"),
    (lambda text: text.replace("UTF-8", "UTF-32").encode("utf-32"), "UTF-16 or UTF-32"),
    (lambda text: text.replace("UTF-8", "ISO-8859-1").encode("latin-1"), "declares encoding 'ISO-8859-1'"),
    (lambda text: text.replace("UTF-8", "windows-1252").encode("cp1252"), "declares encoding 'windows-1252'"),
    (lambda text: text.encode("latin-1"), "not valid UTF-8 (byte 0xf3 on line"),
    (lambda text: text.replace("Valoració", "Valoraci\udcff").encode("utf-8", "surrogateescape"),
     "not valid UTF-8 (byte 0xff"),
])
def test_non_utf8_diagrams_are_refused(client, encode, fragment):
    refused(client, bundle(encode(diagram())), fragment)


def test_a_utf8_byte_order_mark_is_tolerated_but_not_with_a_doctype(client):
    """Windows tools write a UTF-8 BOM; it changes nothing, so it deploys. The DOCTYPE check still sees through it."""
    head = "\ufeff" + DECLARATION
    refused(client, bundle(diagram(head=head + '<!DOCTYPE d [<!ENTITY a "b">]>\n').encode()), "DOCTYPE")
    sent = client.send(bundle(diagram(head=head).encode()))
    assert sent.status == 201, sent.response.text
    assert ("atac", sent.response.json()["version"]) in client.deployed()


# --------------------------------------------------------------------------- processing instructions, XInclude
@pytest.mark.parametrize("content", [
    diagram(before_root='<?xml-stylesheet type="text/xsl" href="http://127.0.0.1:9/x.xsl"?>\n'),
    diagram(doc='Valoració <?php system("id"); ?>'),
    diagram() + "<?trailing instruction?>",
])
def test_processing_instructions_are_refused(client, content):
    refused(client, bundle(content), "processing instructions are not allowed")


@pytest.mark.parametrize("content", [
    # In extensionElements the BPMN schema allows any element, so only an explicit check stops it.
    diagram(extensions='<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" '
                       'parse="text" />'),
    diagram(**{"<bpmn:endEvent": '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="other.bpmn" />'
                                 "<bpmn:endEvent"}),
])
def test_xinclude_is_refused(client, content):
    problems = refused(client, bundle(content), "XInclude is not allowed")
    assert all("root:" not in p["message"] for p in problems)


def test_the_server_still_serves_after_every_attack(client):
    """The last word: after all of the above, a good bundle still deploys and is listed."""
    sent = client.send(bundle(diagram()))
    assert sent.status == 201 and sent.seconds < MAX_SECONDS, sent.response.text
    assert ("atac", sent.response.json()["version"]) in client.deployed()
    client.still_serving()
