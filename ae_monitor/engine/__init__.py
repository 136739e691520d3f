"""The engine: one micro-batch of records in, one BatchResult out (windows, alerts, dead letters, codes, cleaned
windows, changed alert states, positions for commits); no I/O. Rooms, along the data: routing (which bundle),
ingest (records and SampleRows into vectors), streams (the per-stream state table), slots (one loaded bundle each),
windows (scoring per bundle), decide (alert decisions), batch (the result types), engine (the facade)."""

from ae_monitor.engine.batch import BatchResult, Progress
from ae_monitor.engine.engine import Engine
from ae_monitor.engine.routing import Router, routing_fields
from ae_monitor.engine.streams import RecordPosition

__all__ = ["BatchResult", "Engine", "Progress", "RecordPosition", "Router", "routing_fields"]
