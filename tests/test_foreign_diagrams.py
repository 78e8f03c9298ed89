"""Diagrams drawn in other modelers, and BPMN this engine does not run, sent to the deploy API.

Small samples in the style of Camunda Modeler (Camunda 7 and Zeebe), Signavio, Trisotech and ARIS
exports. Each one is either deployed (a valid executable diagram whose lanes map to roles) or refused
with a 422 problem+json whose problems name the element id and the unsupported element or feature:
never a 500, never a stack trace.
"""
from __future__ import annotations

import pytest

from workflows.pathways import BUNDLED_DIAGRAMS

from .deploy_http import ANALYST, assert_problem_json, deploy_client
from .pathway_driver import case, inbox, notify, task_in_inbox

FORM = b"""{"type": "default", "id": "Form_valorar", "schemaVersion": 16, "components": [
 {"type": "radio", "key": "risc", "label": "Hi ha risc?", "id": "Field_risc", "validate": {"required": true},
  "values": [{"label": "S\\u00ed", "value": true}, {"label": "No", "value": false}]}]}"""
FORMS = [("forms/Activity_valorar.form", FORM)]

DI_NAMESPACES = ('xmlns:bpmndi="http://www.omg.org/spec/BPMN/20100524/DI" '
                 'xmlns:dc="http://www.omg.org/spec/DD/20100524/DC" xmlns:di="http://www.omg.org/spec/DD/20100524/DI"')
DI = """<bpmndi:BPMNDiagram id="BPMNDiagram_1"><bpmndi:BPMNPlane id="BPMNPlane_1" bpmnElement="{plane}">
    <bpmndi:BPMNShape id="Activity_valorar_di" bpmnElement="Activity_valorar">
      <dc:Bounds x="270" y="77" width="100" height="80" /></bpmndi:BPMNShape>
    <bpmndi:BPMNEdge id="Flow_1_di" bpmnElement="Flow_1"><di:waypoint x="215" y="117" /><di:waypoint x="270" y="117" />
    </bpmndi:BPMNEdge>
  </bpmndi:BPMNPlane></bpmndi:BPMNDiagram>"""

# ------------------------------------------------------------------ Camunda Modeler, Camunda 7
CAMUNDA_7 = f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" {DI_NAMESPACES}
  xmlns:camunda="http://camunda.org/schema/1.0/bpmn" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xmlns:modeler="http://camunda.org/schema/modeler/1.0" id="Definitions_0k2x9ab"
  targetNamespace="http://bpmn.io/schema/bpmn" exporter="Camunda Modeler" exporterVersion="5.19.0"
  modeler:executionPlatform="Camunda Platform" modeler:executionPlatformVersion="7.20.0">
  <bpmn:collaboration id="Collaboration_1">
    <bpmn:participant id="Participant_sscb" name="Serveis socials" processRef="valoracio_camunda" />
  </bpmn:collaboration>
  <bpmn:process id="valoracio_camunda" name="Valoració (Camunda)" isExecutable="true"
    camunda:historyTimeToLive="180" camunda:versionTag="1.2">
    <bpmn:laneSet id="LaneSet_1">
      <bpmn:lane id="Lane_ts" name="Treballador/a social">
        <bpmn:flowNodeRef>StartEvent_1</bpmn:flowNodeRef><bpmn:flowNodeRef>Activity_valorar</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>Gateway_risc</bpmn:flowNodeRef><bpmn:flowNodeRef>Activity_comunicar</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>Event_espera</bpmn:flowNodeRef><bpmn:flowNodeRef>Event_fi</bpmn:flowNodeRef>
      </bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="StartEvent_1" name="Notificació rebuda" camunda:initiator="iniciador">
      <bpmn:outgoing>Flow_1</bpmn:outgoing>
    </bpmn:startEvent>
    <bpmn:userTask id="Activity_valorar" name="Valorar el risc" camunda:assignee="${{iniciador}}"
      camunda:candidateGroups="treballadors-socials" camunda:formKey="camunda-forms:deployment:valorar.form">
      <bpmn:extensionElements>
        <camunda:inputOutput>
          <camunda:inputParameter name="termini">P10D</camunda:inputParameter>
        </camunda:inputOutput>
        <camunda:taskListener class="cat.mallorca.camins.AuditListener" event="create" />
      </bpmn:extensionElements>
      <bpmn:incoming>Flow_1</bpmn:incoming><bpmn:outgoing>Flow_2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:exclusiveGateway id="Gateway_risc" name="Hi ha risc?" default="Flow_no">
      <bpmn:incoming>Flow_2</bpmn:incoming><bpmn:outgoing>Flow_si</bpmn:outgoing><bpmn:outgoing>Flow_no</bpmn:outgoing>
    </bpmn:exclusiveGateway>
    <bpmn:serviceTask id="Activity_comunicar" name="Comunicar a Fiscalia" camunda:delegateExpression="${{fiscalia}}">
      <bpmn:incoming>Flow_si</bpmn:incoming><bpmn:outgoing>Flow_3</bpmn:outgoing>
    </bpmn:serviceTask>
    <bpmn:intermediateCatchEvent id="Event_espera" name="10 dies">
      <bpmn:incoming>Flow_3</bpmn:incoming><bpmn:outgoing>Flow_4</bpmn:outgoing>
      <bpmn:timerEventDefinition id="TimerEventDefinition_1">
        <bpmn:timeDuration xsi:type="bpmn:tFormalExpression">P10D</bpmn:timeDuration>
      </bpmn:timerEventDefinition>
    </bpmn:intermediateCatchEvent>
    <bpmn:endEvent id="Event_fi" name="Valorat"><bpmn:incoming>Flow_4</bpmn:incoming>
      <bpmn:incoming>Flow_no</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="Flow_1" sourceRef="StartEvent_1" targetRef="Activity_valorar" />
    <bpmn:sequenceFlow id="Flow_2" sourceRef="Activity_valorar" targetRef="Gateway_risc" />
    <bpmn:sequenceFlow id="Flow_si" name="Sí" sourceRef="Gateway_risc" targetRef="Activity_comunicar">
      <bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">${{risc == true}}</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="Flow_no" name="No" sourceRef="Gateway_risc" targetRef="Event_fi" />
    <bpmn:sequenceFlow id="Flow_3" sourceRef="Activity_comunicar" targetRef="Event_espera" />
    <bpmn:sequenceFlow id="Flow_4" sourceRef="Event_espera" targetRef="Event_fi" />
  </bpmn:process>
  {DI.format(plane="Collaboration_1")}
</bpmn:definitions>
"""

# The same diagram after an analyst adapted it: Python conditions, spiffworkflow extensions, a quoted
# timer. What Camunda Modeler adds to the process and the definitions (history, version tag, execution
# platform) changes nothing here and may stay.
CAMUNDA_7_ADAPTED = (
    CAMUNDA_7
    .replace('xmlns:camunda="http://camunda.org/schema/1.0/bpmn"',
             'xmlns:camunda="http://camunda.org/schema/1.0/bpmn" '
             'xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"')
    .replace(' camunda:initiator="iniciador"', "")
    .replace(''' camunda:assignee="${iniciador}"
      camunda:candidateGroups="treballadors-socials" camunda:formKey="camunda-forms:deployment:valorar.form"''', "")
    .replace('''<camunda:inputOutput>
          <camunda:inputParameter name="termini">P10D</camunda:inputParameter>
        </camunda:inputOutput>
        <camunda:taskListener class="cat.mallorca.camins.AuditListener" event="create" />''',
             '''<spiffworkflow:properties>
          <spiffworkflow:property name="form" value="forms/Activity_valorar.form" />
        </spiffworkflow:properties>''')
    .replace(''' camunda:delegateExpression="${fiscalia}">''', '''>
      <bpmn:extensionElements><spiffworkflow:serviceTaskOperator id="record_communication">
        <spiffworkflow:parameters>
          <spiffworkflow:parameter id="recipient" type="str" value="'Fiscalia de Menors'" />
          <spiffworkflow:parameter id="subject" type="str" value="'Situació de risc'" />
        </spiffworkflow:parameters></spiffworkflow:serviceTaskOperator></bpmn:extensionElements>''')
    .replace(">P10D</bpmn:timeDuration>", '>"P10D"</bpmn:timeDuration>')
    .replace("${risc == true}", "risc == True")
)

# ------------------------------------------------------------------ Camunda Modeler, Camunda 8 (Zeebe)
ZEEBE = f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" {DI_NAMESPACES}
  xmlns:zeebe="http://camunda.org/schema/zeebe/1.0" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xmlns:modeler="http://camunda.org/schema/modeler/1.0" id="Definitions_1u6n2qd"
  targetNamespace="http://bpmn.io/schema/bpmn" exporter="Camunda Modeler" exporterVersion="5.19.0"
  modeler:executionPlatform="Camunda Cloud" modeler:executionPlatformVersion="8.4.0">
  <bpmn:process id="valoracio_zeebe" name="Valoració (Zeebe)" isExecutable="true">
    <bpmn:laneSet id="LaneSet_1">
      <bpmn:lane id="Lane_ts" name="Treballador/a social">
        <bpmn:flowNodeRef>StartEvent_1</bpmn:flowNodeRef><bpmn:flowNodeRef>Activity_valorar</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>Gateway_risc</bpmn:flowNodeRef><bpmn:flowNodeRef>Activity_comunicar</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>Event_fi</bpmn:flowNodeRef>
      </bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="StartEvent_1"><bpmn:outgoing>Flow_1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="Activity_valorar" name="Valorar el risc">
      <bpmn:extensionElements>
        <zeebe:formDefinition formKey="camunda-forms:bpmn:userTaskForm_valorar" />
        <zeebe:assignmentDefinition candidateGroups="sscb" />
      </bpmn:extensionElements>
      <bpmn:incoming>Flow_1</bpmn:incoming><bpmn:outgoing>Flow_2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:exclusiveGateway id="Gateway_risc" default="Flow_no">
      <bpmn:incoming>Flow_2</bpmn:incoming><bpmn:outgoing>Flow_si</bpmn:outgoing><bpmn:outgoing>Flow_no</bpmn:outgoing>
    </bpmn:exclusiveGateway>
    <bpmn:serviceTask id="Activity_comunicar" name="Comunicar a Fiscalia">
      <bpmn:extensionElements><zeebe:taskDefinition type="comunicar-fiscalia" retries="3" /></bpmn:extensionElements>
      <bpmn:incoming>Flow_si</bpmn:incoming><bpmn:outgoing>Flow_3</bpmn:outgoing>
    </bpmn:serviceTask>
    <bpmn:endEvent id="Event_fi"><bpmn:incoming>Flow_3</bpmn:incoming><bpmn:incoming>Flow_no</bpmn:incoming>
    </bpmn:endEvent>
    <bpmn:sequenceFlow id="Flow_1" sourceRef="StartEvent_1" targetRef="Activity_valorar" />
    <bpmn:sequenceFlow id="Flow_2" sourceRef="Activity_valorar" targetRef="Gateway_risc" />
    <bpmn:sequenceFlow id="Flow_si" sourceRef="Gateway_risc" targetRef="Activity_comunicar">
      <bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">=risc = true</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="Flow_no" sourceRef="Gateway_risc" targetRef="Event_fi" />
    <bpmn:sequenceFlow id="Flow_3" sourceRef="Activity_comunicar" targetRef="Event_fi" />
  </bpmn:process>
  {DI.format(plane="valoracio_zeebe")}
</bpmn:definitions>
"""

# ------------------------------------------------------------------ Signavio Process Manager
SIGNAVIO = """<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:signavio="http://www.signavio.com"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:bpmndi="http://www.omg.org/spec/BPMN/20100524/DI"
  xmlns:omgdc="http://www.omg.org/spec/DD/20100524/DC" xmlns:omgdi="http://www.omg.org/spec/DD/20100524/DI"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
  id="sid-6f1c2a7e-0d1b-4c55-9b3a-6b7d3f1e2a90" exporter="Signavio Process Editor, http://www.signavio.com"
  exporterVersion="17.6.0" expressionLanguage="http://www.w3.org/TR/XPath" typeLanguage="http://www.w3.org/2001/XMLSchema"
  targetNamespace="http://www.signavio.com">
  <process id="sid-valoracio" name="Valoració (Signavio)" isClosed="false" isExecutable="false" processType="None">
    <extensionElements><signavio:signavioDiagramMetaData metaKey="revisionid" metaValue="4a1f0c"/></extensionElements>
    <laneSet id="sid-laneset">
      <lane id="sid-lane-ts" name="Treballador/a social">
        <extensionElements><signavio:signavioMetaData metaKey="bgcolor" metaValue=""/></extensionElements>
        <flowNodeRef>sid-start</flowNodeRef><flowNodeRef>Activity_valorar</flowNodeRef>
        <flowNodeRef>sid-end</flowNodeRef>
      </lane>
    </laneSet>
    <startEvent id="sid-start" name="Notificació rebuda">
      <extensionElements><signavio:signavioMetaData metaKey="bgcolor" metaValue="#ffffff"/></extensionElements>
      <outgoing>sid-flow-1</outgoing>
    </startEvent>
    <TASK id="Activity_valorar" name="Valorar el risc">
      <extensionElements>
        <signavio:signavioMetaData metaKey="bgcolor" metaValue="#ffffcc"/>
        <signavio:signavioMetaData metaKey="risklevel" metaValue=""/>
        EXTENSIONS
      </extensionElements>
      <incoming>sid-flow-1</incoming><outgoing>sid-flow-2</outgoing>
    </TASK>
    <endEvent id="sid-end" name="Valorat"><incoming>sid-flow-2</incoming></endEvent>
    <sequenceFlow id="sid-flow-1" name="" sourceRef="sid-start" targetRef="Activity_valorar"/>
    <sequenceFlow id="sid-flow-2" name="" sourceRef="Activity_valorar" targetRef="sid-end"/>
  </process>
  <bpmndi:BPMNDiagram id="sid-diagram"><bpmndi:BPMNPlane id="sid-plane" bpmnElement="sid-valoracio">
    <bpmndi:BPMNShape id="Activity_valorar_gui" bpmnElement="Activity_valorar">
      <omgdc:Bounds height="80.0" width="100.0" x="240.0" y="100.0"/></bpmndi:BPMNShape>
  </bpmndi:BPMNPlane></bpmndi:BPMNDiagram>
</definitions>
"""
FORM_PROPERTY = ('<spiffworkflow:properties><spiffworkflow:property name="form" value="forms/Activity_valorar.form"/>'
                 '</spiffworkflow:properties>')
SIGNAVIO_AS_EXPORTED = SIGNAVIO.replace("TASK", "task").replace("EXTENSIONS", "")
SIGNAVIO_ADAPTED = (SIGNAVIO.replace("TASK", "userTask").replace("EXTENSIONS", FORM_PROPERTY)
                    .replace('isExecutable="false"', 'isExecutable="true"'))

# ------------------------------------------------------------------ Trisotech Workflow Modeler
TRISOTECH = f"""<?xml version="1.0" encoding="UTF-8"?>
<semantic:definitions xmlns:semantic="http://www.omg.org/spec/BPMN/20100524/MODEL" {DI_NAMESPACES}
  xmlns:triso="http://www.trisotech.com/2015/triso/modeling" xmlns:trisobpmn="http://www.trisotech.com/2014/triso/bpmn"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  id="_d7c5e1a0-3b1f-4e5a-8a59-2f5b0f4a6c11" name="Valoració" targetNamespace="http://www.trisotech.com/definitions/_d7c5"
  exporter="Workflow Modeler" exporterVersion="12.3.1" triso:logoChoice="Default">
  <semantic:process id="valoracio_trisotech" name="Valoració (Trisotech)" isExecutable="true">
    <semantic:laneSet id="_ls"><semantic:lane id="_lane_ts" name="Treballador/a social">
      <semantic:flowNodeRef>_start</semantic:flowNodeRef><semantic:flowNodeRef>Activity_valorar</semantic:flowNodeRef>
      <semantic:flowNodeRef>_end</semantic:flowNodeRef>
    </semantic:lane></semantic:laneSet>
    <semantic:startEvent id="_start" name="Notificació rebuda"><semantic:outgoing>Flow_1</semantic:outgoing>
    </semantic:startEvent>
    <semantic:userTask id="Activity_valorar" name="Valorar el risc" implementation="##unspecified">
      <semantic:documentation textFormat="text/html">&lt;p&gt;Valoració amb l'instrument VALORA.&lt;/p&gt;
      </semantic:documentation>
      <semantic:extensionElements>
        <trisobpmn:taskFrame color="#F5F5F5" />
        {FORM_PROPERTY}
      </semantic:extensionElements>
      <semantic:incoming>Flow_1</semantic:incoming><semantic:outgoing>Flow_2</semantic:outgoing>
    </semantic:userTask>
    <semantic:endEvent id="_end" name="Valorat"><semantic:incoming>Flow_2</semantic:incoming></semantic:endEvent>
    <semantic:sequenceFlow id="Flow_1" sourceRef="_start" targetRef="Activity_valorar" />
    <semantic:sequenceFlow id="Flow_2" sourceRef="Activity_valorar" targetRef="_end" />
  </semantic:process>
  {DI.format(plane="valoracio_trisotech")}
</semantic:definitions>
"""

# ------------------------------------------------------------------ ARIS: documentation, artifacts, data
ARIS = f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" {DI_NAMESPACES}
  xmlns:aris="http://www.example.org/aris/bpmn-extensions" xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
  id="ARIS_defs_1" targetNamespace="http://www.example.org/aris" exporter="ARIS Architect" exporterVersion="10.0.22">
  <bpmn:category id="Category_1"><bpmn:categoryValue id="CategoryValue_1" value="Fase d'investigació" />
  </bpmn:category>
  <bpmn:process id="valoracio_aris" name="Valoració (ARIS)" isExecutable="true">
    <bpmn:documentation>Procediment de valoració del risc (Llei 9/2019, art. 102).</bpmn:documentation>
    <bpmn:extensionElements><aris:modelAttributes owner="IMAS" status="released" /></bpmn:extensionElements>
    <bpmn:laneSet id="LaneSet_1"><bpmn:lane id="Lane_ts" name="Treballador/a social">
      <bpmn:flowNodeRef>Start_1</bpmn:flowNodeRef><bpmn:flowNodeRef>Activity_valorar</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>End_1</bpmn:flowNodeRef>
    </bpmn:lane></bpmn:laneSet>
    <bpmn:dataObject id="DataObject_informe" name="Informe social" />
    <bpmn:dataObjectReference id="DataObjectReference_informe" name="Informe social"
      dataObjectRef="DataObject_informe" />
    <bpmn:startEvent id="Start_1" name="Notificació rebuda">
      <bpmn:documentation>Arriba pel registre d'entrada.</bpmn:documentation>
      <bpmn:outgoing>Flow_1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="Activity_valorar" name="Valorar el risc">
      <bpmn:documentation>Visita domiciliària i entrevista amb la família.</bpmn:documentation>
      <bpmn:extensionElements><aris:objectAttributes guid="a5f1c0de-77aa-11ee-0000-0a0b0c0d0e0f" />{FORM_PROPERTY}
      </bpmn:extensionElements>
      <bpmn:incoming>Flow_1</bpmn:incoming><bpmn:outgoing>Flow_2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:endEvent id="End_1" name="Valorat"><bpmn:incoming>Flow_2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="Flow_1" sourceRef="Start_1" targetRef="Activity_valorar" />
    <bpmn:sequenceFlow id="Flow_2" sourceRef="Activity_valorar" targetRef="End_1" />
    <bpmn:textAnnotation id="TextAnnotation_1"><bpmn:text>Termini: 10 dies hàbils</bpmn:text></bpmn:textAnnotation>
    <bpmn:association id="Association_1" sourceRef="Activity_valorar" targetRef="TextAnnotation_1" />
    <bpmn:association id="Association_2" sourceRef="Activity_valorar" targetRef="DataObjectReference_informe" />
    <bpmn:group id="Group_1" categoryValueRef="CategoryValue_1" />
  </bpmn:process>
  {DI.format(plane="valoracio_aris")}
</bpmn:definitions>
"""


# ------------------------------------------------------------------ BPMN features the engine does not run
def process(body: str, refs: str, lanes: str = "Treballador/a social", key: str = "funcionalitat",
            before: str = "", user_task: bool = False) -> str:
    """A small executable process around `body`, all in one lane (none if `lanes` is empty)."""
    lane_set = "" if not lanes else (
        f'<bpmn:laneSet id="LaneSet_1"><bpmn:lane id="Lane_1" name="{lanes}">'
        + "".join(f"<bpmn:flowNodeRef>{r}</bpmn:flowNodeRef>" for r in refs.split()) + "</bpmn:lane></bpmn:laneSet>")
    task = ("""<bpmn:userTask id="Activity_valorar" name="Valorar"><bpmn:extensionElements>""" + FORM_PROPERTY +
            "</bpmn:extensionElements><bpmn:incoming>Flow_in</bpmn:incoming><bpmn:outgoing>Flow_out</bpmn:outgoing>"
            "</bpmn:userTask>") if user_task else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs" targetNamespace="http://camins">
  {before}
  <bpmn:process id="{key}" name="Funcionalitat" isExecutable="true">
    {lane_set}
    {task}
    {body}
  </bpmn:process>
</bpmn:definitions>
"""


def script(task_id: str, incoming: str, outgoing: str, text: str = "fet = True", attrs: str = "") -> str:
    return (f'<bpmn:scriptTask id="{task_id}" name="{task_id}" scriptFormat="python"{attrs}>'
            f"<bpmn:incoming>{incoming}</bpmn:incoming><bpmn:outgoing>{outgoing}</bpmn:outgoing>"
            f"<bpmn:script>{text}</bpmn:script></bpmn:scriptTask>")


def flow(flow_id: str, source: str, target: str, condition: str = "") -> str:
    body = f'<bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">{condition}</bpmn:conditionExpression>' \
        if condition else ""
    return f'<bpmn:sequenceFlow id="{flow_id}" sourceRef="{source}" targetRef="{target}">{body}</bpmn:sequenceFlow>'


START = '<bpmn:startEvent id="Start_1"><bpmn:outgoing>F1</bpmn:outgoing></bpmn:startEvent>'


def end(*incoming: str) -> str:
    return ('<bpmn:endEvent id="End_1">' + "".join(f"<bpmn:incoming>{i}</bpmn:incoming>" for i in incoming)
            + "</bpmn:endEvent>")


COMPLEX_GATEWAY = process(
    START + """<bpmn:complexGateway id="Gateway_complex" name="Dos de tres informes">
      <bpmn:incoming>F1</bpmn:incoming><bpmn:outgoing>F2</bpmn:outgoing><bpmn:outgoing>F3</bpmn:outgoing>
      <bpmn:activationCondition xsi:type="bpmn:tFormalExpression">informes &gt;= 2</bpmn:activationCondition>
    </bpmn:complexGateway>""" + script("Activity_a", "F2", "F4") + script("Activity_b", "F3", "F5") + end("F4", "F5")
    + flow("F1", "Start_1", "Gateway_complex") + flow("F2", "Gateway_complex", "Activity_a", "True")
    + flow("F3", "Gateway_complex", "Activity_b", "True") + flow("F4", "Activity_a", "End_1")
    + flow("F5", "Activity_b", "End_1"),
    "Start_1 Gateway_complex Activity_a Activity_b End_1")

COMPENSATION = process(
    START + script("Activity_reservar", "F1", "F2") + """
    <bpmn:boundaryEvent id="Boundary_compensar" attachedToRef="Activity_reservar">
      <bpmn:compensateEventDefinition id="CompensateEventDefinition_1" />
    </bpmn:boundaryEvent>""" + script("Activity_anullar", "", "", attrs=' isForCompensation="true"')
    .replace("<bpmn:incoming></bpmn:incoming><bpmn:outgoing></bpmn:outgoing>", "") + """
    <bpmn:intermediateThrowEvent id="Event_compensar" name="Desfer la reserva">
      <bpmn:incoming>F2</bpmn:incoming><bpmn:outgoing>F3</bpmn:outgoing>
      <bpmn:compensateEventDefinition id="CompensateEventDefinition_2" activityRef="Activity_reservar" />
    </bpmn:intermediateThrowEvent>""" + end("F3")
    + flow("F1", "Start_1", "Activity_reservar") + flow("F2", "Activity_reservar", "Event_compensar")
    + flow("F3", "Event_compensar", "End_1")
    + '<bpmn:association id="Association_c" associationDirection="One" sourceRef="Boundary_compensar" '
      'targetRef="Activity_anullar" />',
    "Start_1 Activity_reservar Boundary_compensar Activity_anullar Event_compensar End_1")

TRANSACTION = process(
    START + """<bpmn:transaction id="Transaction_acolliment" name="Formalitzar l'acolliment">
      <bpmn:incoming>F1</bpmn:incoming><bpmn:outgoing>F2</bpmn:outgoing>
      <bpmn:startEvent id="T_start"><bpmn:outgoing>T1</bpmn:outgoing></bpmn:startEvent>
      """ + script("T_signar", "T1", "T2") + """
      <bpmn:endEvent id="Event_cancel"><bpmn:incoming>T2</bpmn:incoming>
        <bpmn:cancelEventDefinition id="CancelEventDefinition_1" /></bpmn:endEvent>
      """ + flow("T1", "T_start", "T_signar") + flow("T2", "T_signar", "Event_cancel") + """
    </bpmn:transaction>""" + end("F2")
    + flow("F1", "Start_1", "Transaction_acolliment") + flow("F2", "Transaction_acolliment", "End_1"),
    "Start_1 Transaction_acolliment End_1")

AD_HOC = process(
    START + """<bpmn:adHocSubProcess id="AdHoc_diligencies" name="Diligències prèvies" ordering="Parallel">
      <bpmn:incoming>F1</bpmn:incoming><bpmn:outgoing>F2</bpmn:outgoing>
      <bpmn:task id="AdHoc_escola" name="Consultar l'escola" /><bpmn:task id="AdHoc_salut" name="Consultar salut" />
      <bpmn:completionCondition xsi:type="bpmn:tFormalExpression">True</bpmn:completionCondition>
    </bpmn:adHocSubProcess>""" + end("F2")
    + flow("F1", "Start_1", "AdHoc_diligencies") + flow("F2", "AdHoc_diligencies", "End_1"),
    "Start_1 AdHoc_diligencies End_1")

CONDITIONAL_EVENT = process(
    START + """<bpmn:intermediateCatchEvent id="Event_condicio" name="Quan hi hagi informe">
      <bpmn:incoming>F1</bpmn:incoming><bpmn:outgoing>F2</bpmn:outgoing>
      <bpmn:conditionalEventDefinition id="ConditionalEventDefinition_1">
        <bpmn:condition xsi:type="bpmn:tFormalExpression">informe_rebut == True</bpmn:condition>
      </bpmn:conditionalEventDefinition>
    </bpmn:intermediateCatchEvent>""" + end("F2")
    + flow("F1", "Start_1", "Event_condicio") + flow("F2", "Event_condicio", "End_1"),
    "Start_1 Event_condicio End_1")

LINK_EVENTS = process(
    START + """<bpmn:intermediateThrowEvent id="Event_link_a" name="A la pàgina 2"><bpmn:incoming>F1</bpmn:incoming>
      <bpmn:linkEventDefinition id="LinkEventDefinition_1" name="pagina2" /></bpmn:intermediateThrowEvent>
    <bpmn:intermediateCatchEvent id="Event_link_b" name="Des de la pàgina 1"><bpmn:outgoing>F2</bpmn:outgoing>
      <bpmn:linkEventDefinition id="LinkEventDefinition_2" name="pagina2" /></bpmn:intermediateCatchEvent>"""
    + end("F2") + flow("F1", "Start_1", "Event_link_a") + flow("F2", "Event_link_b", "End_1"),
    "Start_1 Event_link_a Event_link_b End_1")

CHOREOGRAPHY = process(
    START + end("F1") + flow("F1", "Start_1", "End_1"), "Start_1 End_1",
    before="""<bpmn:message id="Message_sollicitud" name="sollicitud_informe" />
  <bpmn:choreography id="Choreography_informe">
    <bpmn:participant id="Part_sscb" name="SSCB" /><bpmn:participant id="Part_escola" name="Escola" />
    <bpmn:messageFlow id="MessageFlow_1" sourceRef="Part_sscb" targetRef="Part_escola"
      messageRef="Message_sollicitud" />
    <bpmn:startEvent id="Ch_start"><bpmn:outgoing>CF1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:choreographyTask id="ChoreographyTask_informe" name="Demanar informe" initiatingParticipantRef="Part_sscb">
      <bpmn:incoming>CF1</bpmn:incoming><bpmn:participantRef>Part_sscb</bpmn:participantRef>
      <bpmn:participantRef>Part_escola</bpmn:participantRef><bpmn:messageFlowRef>MessageFlow_1</bpmn:messageFlowRef>
    </bpmn:choreographyTask>
    <bpmn:sequenceFlow id="CF1" sourceRef="Ch_start" targetRef="ChoreographyTask_informe" />
  </bpmn:choreography>""")

USER_TASK_FLOW = ('<bpmn:startEvent id="Start_1"><bpmn:outgoing>Flow_in</bpmn:outgoing></bpmn:startEvent>'
                  + end("Flow_out") + flow("Flow_in", "Start_1", "Activity_valorar")
                  + flow("Flow_out", "Activity_valorar", "End_1"))
NO_LANES = process(USER_TASK_FLOW, "", lanes="", user_task=True)
NO_LANES_AUTOMATIC = process(START + script("Activity_calcular", "F1", "F2") + end("F2")
                             + flow("F1", "Start_1", "Activity_calcular") + flow("F2", "Activity_calcular", "End_1"),
                             "", lanes="", key="automatic_sense_carrils")
UNKNOWN_ROLE = process(USER_TASK_FLOW, "Start_1 Activity_valorar End_1", lanes="Director/a general", user_task=True)
UNNAMED_LANE = process(USER_TASK_FLOW, "Start_1 Activity_valorar End_1", lanes=" ", user_task=True)
GROOVY = process(START + script("Activity_calcular", "F1", "F2", "def x = 1", ) .replace('"python"', '"groovy"')
                 + end("F2") + flow("F1", "Start_1", "Activity_calcular") + flow("F2", "Activity_calcular", "End_1"),
                 "Start_1 Activity_calcular End_1")
JAVASCRIPT_CONDITION = process(
    START + '<bpmn:exclusiveGateway id="Gateway_1" default="F3"><bpmn:incoming>F1</bpmn:incoming>'
    '<bpmn:outgoing>F2</bpmn:outgoing><bpmn:outgoing>F3</bpmn:outgoing></bpmn:exclusiveGateway>' + end("F2", "F3")
    + flow("F1", "Start_1", "Gateway_1")
    + flow("F2", "Gateway_1", "End_1", "risc").replace('xsi:type', 'language="javascript" xsi:type')
    + flow("F3", "Gateway_1", "End_1"),
    "Start_1 Gateway_1 End_1")
TWO_EXECUTABLE_POOLS = process(START + end("F1") + flow("F1", "Start_1", "End_1"), "Start_1 End_1").replace(
    "</bpmn:definitions>", """<bpmn:process id="familia" name="Família" isExecutable="true">
    <bpmn:startEvent id="Fam_start"><bpmn:outgoing>FF1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:endEvent id="Fam_end"><bpmn:incoming>FF1</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="FF1" sourceRef="Fam_start" targetRef="Fam_end" /></bpmn:process></bpmn:definitions>""")
CALL_ACTIVITY_ELSEWHERE = process(
    START + '<bpmn:callActivity id="Activity_cridar" calledElement="proces_camunda_extern"><bpmn:incoming>F1'
    '</bpmn:incoming><bpmn:outgoing>F2</bpmn:outgoing></bpmn:callActivity>' + end("F2")
    + flow("F1", "Start_1", "Activity_cridar") + flow("F2", "Activity_cridar", "End_1"),
    "Start_1 Activity_cridar End_1")
CAMUNDA_MULTI_INSTANCE = process(
    START + script("Activity_visites", "F1", "F2").replace(
        "<bpmn:script>", '<bpmn:multiInstanceLoopCharacteristics xmlns:camunda="http://camunda.org/schema/1.0/bpmn"'
        ' camunda:collection="${germans}" camunda:elementVariable="germa" /><bpmn:script>')
    + end("F2") + flow("F1", "Start_1", "Activity_visites") + flow("F2", "Activity_visites", "End_1"),
    "Start_1 Activity_visites End_1")
UNQUOTED_TIMER = process(
    START + """<bpmn:intermediateCatchEvent id="Event_termini"><bpmn:incoming>F1</bpmn:incoming>
      <bpmn:outgoing>F2</bpmn:outgoing><bpmn:timerEventDefinition id="TimerEventDefinition_1">
      <bpmn:timeDate xsi:type="bpmn:tFormalExpression">2027-01-31T09:00:00Z</bpmn:timeDate>
      </bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>""" + end("F2")
    + flow("F1", "Start_1", "Event_termini") + flow("F2", "Event_termini", "End_1"),
    "Start_1 Event_termini End_1")


@pytest.fixture(scope="module")
def client(database_url):
    with deploy_client(database_url) as deployer:
        yield deployer


DEPLOYED = {
    "camunda_adapted": (CAMUNDA_7_ADAPTED, "valoracio_camunda"),
    "signavio_adapted": (SIGNAVIO_ADAPTED, "sid-valoracio"),
    "trisotech": (TRISOTECH, "valoracio_trisotech"),
    "aris": (ARIS, "valoracio_aris"),
    "no_lanes_automatic": (NO_LANES_AUTOMATIC, "automatic_sense_carrils"),
}


@pytest.mark.parametrize("sample", list(DEPLOYED))
def test_valid_executable_diagrams_from_other_modelers_deploy(client, sample):
    content, key = DEPLOYED[sample]
    validated = client.send([("diagrama.bpmn", content), *FORMS], "/api/definitions/validate")
    assert validated.status == 200, validated.response.text
    assert validated.response.json()["process_key"] == key
    sent = client.send([("diagrama.bpmn", content), *FORMS])
    assert sent.status == 201, sent.response.text
    assert (key, sent.response.json()["version"]) in client.deployed()


# Each refused sample: the problems it must name, as (element id, what the message says).
REFUSED = {
    "camunda_7": (CAMUNDA_7, [
        ("StartEvent_1", "camunda:initiator is an extension of Camunda, which this engine does not run"),
        ("Activity_valorar", "camunda:assignee is an extension of Camunda, which this engine does not run: tasks go "
                             "to the role of their lane"),
        ("Activity_valorar", "camunda:candidateGroups"),
        ("Activity_valorar", "camunda:formKey is an extension of Camunda, which this engine does not run: give the "
                             "user task the spiffworkflow property 'form'"),
        ("Activity_valorar", "camunda:inputOutput"),
        ("Activity_valorar", "camunda:taskListener is an extension of Camunda, which this engine does not run: "
                             "listeners would run code outside the sandbox"),
        ("Activity_valorar", "user task has no 'form' property"),
        ("Activity_comunicar", "camunda:delegateExpression"),
        ("Event_espera", "timer 'P10D' is not a Python expression: quote it"),
        ("Flow_si", "'${risc == true}' is a JUEL/EL expression (Camunda, Activiti); expressions must be Python"),
    ]),
    "zeebe": (ZEEBE, [
        ("Activity_valorar", "zeebe:formDefinition is an extension of Zeebe (Camunda 8)"),
        ("Activity_valorar", "zeebe:assignmentDefinition is an extension of Zeebe (Camunda 8), which this engine does "
                             "not run: tasks go to the role of their lane"),
        ("Activity_comunicar", "zeebe:taskDefinition is an extension of Zeebe (Camunda 8), which this engine does not "
                               "run: a service task names its operation with spiffworkflow:serviceTaskOperator"),
        ("Flow_si", "'=risc = true' is a FEEL expression (Zeebe); expressions must be Python"),
    ]),
    "signavio_as_exported": (SIGNAVIO_AS_EXPORTED, [
        ("sid-valoracio", 'a bundle needs exactly one executable process (found: none); mark the process to run '
                          'with isExecutable="true"'),
    ]),
    "complex_gateway": (COMPLEX_GATEWAY, [("Gateway_complex", "bpmn:complexGateway is not supported")]),
    "compensation": (COMPENSATION, [
        ("Boundary_compensar", "compensation event (bpmn:compensateEventDefinition) is not supported"),
        ("Event_compensar", "compensation event (bpmn:compensateEventDefinition) is not supported"),
        ("Activity_anullar", "compensation handler (isForCompensation on bpmn:scriptTask) is not supported"),
    ]),
    "transaction": (TRANSACTION, [
        ("Transaction_acolliment", "bpmn:transaction is not supported"),
        ("Event_cancel", "cancel event (bpmn:cancelEventDefinition) is not supported"),
    ]),
    "ad_hoc_subprocess": (AD_HOC, [("AdHoc_diligencies", "bpmn:adHocSubProcess is not supported")]),
    "conditional_event": (CONDITIONAL_EVENT, [
        ("Event_condicio", "conditional event (bpmn:conditionalEventDefinition) is not supported"),
    ]),
    "link_events": (LINK_EVENTS, [
        ("Event_link_a", "link event (bpmn:linkEventDefinition) is not supported"),
        ("Event_link_b", "link event (bpmn:linkEventDefinition) is not supported"),
    ]),
    "choreography": (CHOREOGRAPHY, [
        ("Choreography_informe", "bpmn:choreography is not supported by this engine: the engine runs processes"),
        ("ChoreographyTask_informe", "bpmn:choreographyTask is not supported"),
    ]),
    "no_lanes": (NO_LANES, [("Activity_valorar", "user task is not in a lane, so nobody could receive it")]),
    "unknown_role": (UNKNOWN_ROLE, [("Lane_1", "lane 'Director/a general' does not match any role of the catalogue")]),
    "unnamed_lane": (UNNAMED_LANE, [("Lane_1", "lane has no name, so it cannot be mapped to a role")]),
    "groovy_script": (GROOVY, [("Activity_calcular", "script format 'groovy' is not supported: scripts and "
                                                     "expressions are Python")]),
    "javascript_condition": (JAVASCRIPT_CONDITION, [("F2", "expression language 'javascript' is not supported")]),
    "two_executable_pools": (TWO_EXECUTABLE_POOLS, [
        (None, "a bundle needs exactly one executable process (found: funcionalitat, familia)"),
    ]),
    "call_activity_elsewhere": (CALL_ACTIVITY_ELSEWHERE, [
        ("Activity_cridar", "call activity calls process 'proces_camunda_extern', which is not in the bundle"),
    ]),
    "camunda_multi_instance": (CAMUNDA_MULTI_INSTANCE, [("Activity_visites", "camunda:collection")]),
    "unquoted_timer_date": (UNQUOTED_TIMER, [
        ("Event_termini", "timer '2027-01-31T09:00:00Z' is not a Python expression: quote it"),
    ]),
}


@pytest.mark.parametrize("sample", list(REFUSED))
def test_unsupported_diagrams_are_refused_naming_element_and_feature(client, sample):
    content, expected = REFUSED[sample]
    before = client.deployed()
    for path in ("/api/definitions/validate", "/api/definitions"):
        sent = client.send([("diagrama.bpmn", content), *FORMS], path)
        body = assert_problem_json(sent, 422)
        problems = body["problems"]
        for element_id, fragment in expected:
            assert any(p["element_id"] == element_id and fragment in p["message"] for p in problems), \
                (element_id, fragment, problems)
        assert all(p["file"] == "diagrama.bpmn" for p in problems)
        assert all(p["line"] for p in problems if p["element_id"])
        assert body["detail"].startswith("diagrama.bpmn")
    assert client.deployed() == before
    client.still_serving()


def test_an_adapted_camunda_diagram_runs_with_its_task_in_the_lane_roles_inbox(client):
    """Deployed is not enough: the adapted Camunda diagram runs. Its task reaches the social workers of
    the case's municipality (its lane), the Python condition takes the 'Sí' branch, the service task
    records the communication and the quoted timer waits ten days."""
    client.camins.deploy_directory(BUNDLED_DIAGRAMS)  # notifications open cases through pathway 1
    sent = client.send([("diagrama.bpmn", CAMUNDA_7_ADAPTED), *FORMS])
    assert sent.status == 201, sent.response.text
    reference = notify(client.http)
    started = client.http.post("/api/instances", ANALYST,
                               json={"process_key": "valoracio_camunda", "case_reference": reference, "data": {}})
    assert started.status_code == 201, started.text
    task = task_in_inbox(client.http, "ts.sonservera", reference, "Activity_valorar")
    assert task["id"] not in {t["id"] for t in inbox(client.http, "ts.manacor", reference)}
    done = client.http.post(f"/api/tasks/{task['id']}/complete", "ts.sonservera", json={"data": {"risc": True}})
    assert done.status_code == 200, done.text
    instance = client.http.get(f"/api/instances/{started.json()['id']}", ANALYST).json()
    assert "Activity_comunicar" in instance["completed_elements"]
    assert [t["element_id"] for t in instance["timers"]] == ["Event_espera"]
    assert instance["timers"][0]["due_at"].startswith("2026-11-30")
    communications = case(client.http, "coord.sonservera", reference)["communications"]
    assert [c["recipient"] for c in communications] == ["Fiscalia de Menors"]
