"""Ingest: the links frames arrive on: MQTT (mqtt.py), serial (serial.py), BLE (ble.py).

Each ingest puts `Envelope`s on the pipeline's queue.  MQTT gives each one an `ack` that the
pipeline calls only after the frame's reading is durably committed or the frame was
rejected and counted; serial and BLE have no acknowledgement (ack=None).
Lifecycle: start() connects and keeps reconnecting on its own; stop() returns after the
link is closed; no envelope is queued after stop() returns.
"""
