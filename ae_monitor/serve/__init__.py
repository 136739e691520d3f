"""The daemon and the offline runs around the engine: wiring (app), the main loop (loop), where results go
(outputs), commit bookkeeping (commits), and the engine over files (offline).

`serve` is imported lazily by the CLI; this face names nothing so that importing `ae_monitor.serve.offline` does not
pull in Kafka.
"""
