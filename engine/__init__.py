"""Generic BPMN runtime on SpiffWorkflow, with persistence. Knows nothing about children."""
import logging

# SpiffWorkflow logs task data (personal data, here) at info and debug level: keep it out of
# every log, whatever level the application runs at.
logging.getLogger("spiff").setLevel(logging.WARNING)
