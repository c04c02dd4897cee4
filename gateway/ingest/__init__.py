"""Ingest: the links frames arrive on (MQTT now; serial and BLE later).

Each ingest puts `Envelope`s on the pipeline's queue and gives each one an `ack` that the
pipeline calls only after the frame's reading is durably committed or the frame was
rejected and counted.  Lifecycle: start() connects and keeps reconnecting on its own;
stop() returns after the link is closed; no envelope is queued after stop() returns.
"""
