# The node's uplink: frames out to the gateway, time in from it.
#
#   ring.py  FrameRing: the bounded offline buffer (preallocated, oldest first, drop count)
#   mqtt.py  MqttUplink: QoS 1 publishing with reconnects, TLS pass-through, and the
#            downlink time message (its byte layout is in that module's header)
#
# Nothing is imported here, so a node pays only for the modules it uses.
