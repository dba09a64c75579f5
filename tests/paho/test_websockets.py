"""paho-mqtt (Python) over WebSockets against a running Culex: ws and wss, MQTT 3.1.1 and 5.0.

Run by tests/websockets.rs, which starts the broker and sets CULEX_WS_PORT, CULEX_WSS_PORT and
CULEX_CAFILE (the CA of the wss listener's certificate).
"""
import os
import queue
import unittest
import uuid

import paho.mqtt.client as mqtt

WS_PORT = int(os.environ["CULEX_WS_PORT"])
WSS_PORT = int(os.environ["CULEX_WSS_PORT"])
CAFILE = os.environ["CULEX_CAFILE"]
WAIT = 5


def client(port, tls, protocol):
    """A connected paho client over WebSockets; its messages land in a queue."""
    messages = queue.Queue()
    connacks = queue.Queue()
    subacks = queue.Queue()
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"paho-ws-{uuid.uuid4().hex[:8]}",
        protocol=protocol,
        transport="websockets",
    )
    c.ws_set_options(path="/mqtt")
    if tls:
        c.tls_set(ca_certs=CAFILE)
    c.on_message = lambda cl, u, m: messages.put(m)
    c.on_connect = lambda cl, u, flags, rc, p: connacks.put(rc)
    c.on_subscribe = lambda cl, u, mid, rcs, p: subacks.put(rcs)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    rc = connacks.get(timeout=WAIT)
    assert not rc.is_failure, rc
    return c, messages, subacks


class OverWebSockets(unittest.TestCase):
    def round_trip(self, port, tls, protocol):
        sub, messages, subacks = client(port, tls, protocol)
        pub, _, _ = client(port, tls, protocol)
        topic = f"ws/{uuid.uuid4().hex[:8]}"
        sub.subscribe(topic + "/#", 2)
        granted = subacks.get(timeout=WAIT)
        self.assertFalse(any(rc.is_failure for rc in granted), granted)
        big = bytes(range(256)) * 400  # 100 KiB: many frames' worth for a browser
        for qos in (0, 1, 2):
            pub.publish(f"{topic}/{qos}", big, qos=qos).wait_for_publish(WAIT)
            message = messages.get(timeout=WAIT)
            self.assertEqual((message.topic, message.qos), (f"{topic}/{qos}", qos))
            self.assertEqual(message.payload, big)
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()

    def test_ws_v311(self):
        self.round_trip(WS_PORT, False, mqtt.MQTTv311)

    def test_ws_v5(self):
        self.round_trip(WS_PORT, False, mqtt.MQTTv5)

    def test_wss_v311(self):
        self.round_trip(WSS_PORT, True, mqtt.MQTTv311)

    def test_wss_v5(self):
        self.round_trip(WSS_PORT, True, mqtt.MQTTv5)


if __name__ == "__main__":
    unittest.main()
