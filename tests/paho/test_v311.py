"""paho-mqtt (Python) against a running Culex: MQTT 3.1 and 3.1.1 behaviour.

Run by tests/paho.rs, which starts the broker and sets CULEX_PORT.
"""
import os
import queue
import statistics
import time
import unittest
import uuid

import paho.mqtt.client as mqtt

PORT = int(os.environ.get("CULEX_PORT", "1883"))
WAIT = 5


class Client:
    """A paho client whose received messages land in a queue."""

    def __init__(self, client_id=None, clean=True, protocol=mqtt.MQTTv311, will=None):
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.mqtt = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"paho-{uuid.uuid4().hex[:8]}",
            clean_session=clean,
            protocol=protocol,
        )
        if will:
            self.mqtt.will_set(*will)
        self.mqtt.on_message = lambda c, u, m: self.messages.put(m)
        self.mqtt.on_connect = lambda c, u, flags, rc, p: self.connacks.put((flags, rc))
        self.mqtt.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.mqtt.connect("127.0.0.1", PORT, keepalive=30)
        self.mqtt.loop_start()
        self.flags, self.rc = self.connacks.get(timeout=WAIT)

    def subscribe(self, topic, qos):
        self.mqtt.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic, payload, qos=0, retain=False):
        self.mqtt.publish(topic, payload, qos, retain).wait_for_publish(timeout=WAIT)

    def receive(self):
        return self.messages.get(timeout=WAIT)

    def nothing(self, seconds=0.3):
        try:
            message = self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message on {message.topic}")

    def close(self):
        self.mqtt.disconnect()
        self.mqtt.loop_stop()

    def kill(self):
        """Closes the socket without DISCONNECT."""
        self.mqtt.loop_stop()
        self.mqtt.socket().close()


class PahoV311(unittest.TestCase):
    def test_qos_levels_and_downgrade(self):
        sub = Client()
        self.assertEqual([rc.value for rc in sub.subscribe("paho/q/#", 1)], [1])
        pub = Client()
        for qos in (0, 1, 2):
            pub.publish(f"paho/q/{qos}", f"m{qos}", qos)
            message = sub.receive()
            self.assertEqual((message.topic, message.payload, message.qos), (f"paho/q/{qos}", f"m{qos}".encode(), min(qos, 1)))
        pub.close()
        sub.close()

    def test_retained_and_wildcards(self):
        pub = Client()
        pub.publish("paho/r/a", "A", 1, retain=True)
        pub.publish("paho/r/b/c", "C", 1, retain=True)
        sub = Client()
        sub.subscribe("paho/r/+", 1)
        message = sub.receive()
        self.assertEqual((message.topic, message.payload, message.retain), ("paho/r/a", b"A", 1))
        sub.nothing()
        sub.subscribe("paho/r/#", 1)
        topics = sorted(sub.receive().topic for _ in range(2))
        self.assertEqual(topics, ["paho/r/a", "paho/r/b/c"])
        pub.publish("paho/r/a", "", 1, retain=True)
        late = Client()
        late.subscribe("paho/r/#", 0)
        self.assertEqual(late.receive().topic, "paho/r/b/c")
        late.nothing()
        for client in (pub, sub, late):
            client.close()

    def test_will_on_abnormal_close_not_on_disconnect(self):
        watcher = Client()
        watcher.subscribe("paho/will/#", 1)
        polite = Client(will=("paho/will/polite", "no", 1, False))
        polite.close()
        rude = Client(will=("paho/will/rude", "gone", 1, False))
        rude.kill()
        message = watcher.receive()
        self.assertEqual((message.topic, message.payload), ("paho/will/rude", b"gone"))
        watcher.nothing()
        watcher.close()

    def test_persistent_session(self):
        client_id = f"paho-persist-{uuid.uuid4().hex[:6]}"
        sub = Client(client_id, clean=False)
        self.assertFalse(sub.flags.session_present)
        sub.subscribe("paho/p", 2)
        sub.close()
        pub = Client()
        pub.publish("paho/p", "queued", 2)
        back = Client(client_id, clean=False)
        self.assertTrue(back.flags.session_present)
        self.assertEqual(back.receive().payload, b"queued")
        back.close()
        pub.close()

    def test_unsubscribe(self):
        sub = Client()
        sub.subscribe("paho/u", 0)
        unsubscribed = queue.Queue()
        sub.mqtt.on_unsubscribe = lambda c, u, mid, rcs, p: unsubscribed.put(mid)
        sub.mqtt.unsubscribe("paho/u")
        unsubscribed.get(timeout=WAIT)
        pub = Client()
        pub.publish("paho/u", "x", 1)
        sub.nothing()
        sub.close()
        pub.close()

    def test_mqtt_v31_client(self):
        sub = Client(protocol=mqtt.MQTTv31)
        sub.subscribe("paho/v31", 1)
        pub = Client(protocol=mqtt.MQTTv31)
        pub.publish("paho/v31", "old", 1)
        self.assertEqual(sub.receive().payload, b"old")
        sub.close()
        pub.close()

    def test_round_trips_to_itself_with_nagle_on(self):
        # paho leaves Nagle's algorithm on: its next PUBLISH waits for the TCP acknowledgement
        # of the PUBACK it just sent, which the broker must not delay (Linux delays 40 ms).
        # The bound is half that delay; round trips take well under a millisecond.
        client = Client()
        for qos in (1, 2):
            client.subscribe(f"paho/rtt/{qos}", qos)
            took = []
            for _ in range(21):
                start = time.perf_counter()
                client.mqtt.publish(f"paho/rtt/{qos}", "ping", qos)
                client.receive()
                took.append(time.perf_counter() - start)
            self.assertLess(statistics.median(took), 0.020, f"QoS {qos}: {took}")
        client.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
