"""paho-mqtt (Python) MQTT 5.0 clients against a running Culex, mixed with 3.1.1 clients.

Run by tests/paho.rs, which starts the broker and sets CULEX_PORT.
"""
import os
import queue
import time
import unittest
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(os.environ.get("CULEX_PORT", "1883"))
WAIT = 5


class Client:
    """A paho client (5.0 unless told otherwise) whose messages land in a queue."""

    def __init__(
        self, client_id=None, protocol=mqtt.MQTTv5, clean_start=True, expiry=None, will=None
    ):
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        self.connacks = queue.Queue()
        self.published = queue.Queue()
        self.disconnects = queue.Queue()
        kwargs = {} if protocol == mqtt.MQTTv5 else {"clean_session": True}
        self.mqtt = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"paho5-{uuid.uuid4().hex[:8]}" if client_id is None else client_id,
            protocol=protocol,
            **kwargs,
        )
        self.mqtt.on_message = lambda c, u, m: self.messages.put(m)
        self.mqtt.on_connect = lambda c, u, flags, rc, p: self.connacks.put((flags, rc, p))
        self.mqtt.on_subscribe = lambda c, u, mid, rcs, p: self.acks.put(rcs)
        self.mqtt.on_publish = lambda c, u, mid, rc, p: self.published.put((rc, p))
        self.mqtt.on_disconnect = lambda c, u, flags, rc, p: self.disconnects.put((rc, p))
        if will is not None:
            topic, payload, qos, retain, properties = will
            self.mqtt.will_set(topic, payload, qos, retain, properties)
        if protocol == mqtt.MQTTv5:
            properties = None
            if expiry is not None:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = expiry
            self.mqtt.connect("127.0.0.1", PORT, 30, clean_start=clean_start, properties=properties)
        else:
            self.mqtt.connect("127.0.0.1", PORT, 30)
        self.mqtt.loop_start()
        self.flags, self.rc, self.connack_properties = self.connacks.get(timeout=WAIT)

    def subscribe(self, topic, qos=1, properties=None, **options):
        if self.mqtt.protocol == mqtt.MQTTv5:
            self.mqtt.subscribe(topic, options=SubscribeOptions(qos=qos, **options), properties=properties)
        else:
            self.mqtt.subscribe(topic, qos)
        return self.acks.get(timeout=WAIT)

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes; for QoS 1/2, returns the broker's reason code and properties."""
        self.mqtt.publish(topic, payload, qos, retain, properties).wait_for_publish(timeout=WAIT)
        return self.published.get(timeout=WAIT)

    def receive(self):
        return self.messages.get(timeout=WAIT)

    def drain(self, seconds=0.5):
        got = []
        while True:
            try:
                got.append(self.messages.get(timeout=seconds))
            except queue.Empty:
                return got

    def close(self):
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def offline_session(name, topic):
    """A 5.0 session (expiry 30 s) subscribed to `topic` at QoS 1 and left offline: its id."""
    client_id = f"paho5-{name}-{uuid.uuid4().hex[:6]}"
    first = Client(client_id, clean_start=False, expiry=30)
    first.subscribe(topic, 1)
    first.close()
    return client_id


class PahoV5(unittest.TestCase):
    def test_properties_pass_through_and_reach_311_subscribers_as_plain_messages(self):
        v5_sub = Client()
        v5_sub.subscribe("p5/#")
        v3_sub = Client(protocol=mqtt.MQTTv311)
        v3_sub.subscribe("p5/#")
        pub = Client()
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [("b", "2"), ("a", "1")]
        properties.ContentType = "application/json"
        properties.ResponseTopic = "p5/reply"
        properties.CorrelationData = b"id-9"
        pub.publish("p5/t", b"{}", 1, properties=properties)
        got = v5_sub.receive()
        self.assertEqual(got.properties.UserProperty, [("b", "2"), ("a", "1")])
        self.assertEqual(got.properties.ContentType, "application/json")
        self.assertEqual(got.properties.ResponseTopic, "p5/reply")
        self.assertEqual(got.properties.CorrelationData, b"id-9")
        self.assertEqual(v3_sub.receive().payload, b"{}")
        for client in (v5_sub, v3_sub, pub):
            client.close()

    def test_311_publisher_to_v5_subscriber(self):
        sub = Client()
        sub.subscribe("mix/#", 2)
        pub = Client(protocol=mqtt.MQTTv311)
        pub.publish("mix/a", b"old to new", 2)
        got = sub.receive()
        self.assertEqual((got.payload, got.qos), (b"old to new", 2))
        sub.close()
        pub.close()

    def test_session_expiry_resumes_a_session(self):
        client_id = offline_session("exp", "exp5/#")
        pub = Client()
        pub.publish("exp5/x", b"waiting", 1)
        back = Client(client_id, clean_start=False, expiry=30)
        self.assertTrue(back.flags.session_present)
        self.assertEqual(back.receive().payload, b"waiting")
        back.close()
        pub.close()

    def test_subscription_identifier_and_no_local(self):
        client = Client()
        properties = Properties(PacketTypes.SUBSCRIBE)
        properties.SubscriptionIdentifier = 42
        client.subscribe("sid/#", 1, properties=properties)
        client.subscribe("nolocal/#", 1, noLocal=True)
        other = Client()
        other.publish("sid/x", b"s", 1)
        got = client.receive()
        self.assertEqual(got.properties.SubscriptionIdentifier, [42])
        client.publish("nolocal/x", b"mine", 1)
        self.assertEqual(client.drain(), [])
        client.close()
        other.close()

    def test_retain_handling_do_not_send(self):
        pub = Client()
        pub.publish("rh/x", b"kept", 1, retain=True)
        sub = Client()
        sub.subscribe("rh/#", 1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        self.assertEqual(sub.drain(), [])
        pub.publish("rh/x", b"", 1, retain=True)  # leave no retained message behind
        sub.close()
        pub.close()

    def test_shared_subscription_splits_the_work(self):
        members = [Client() for _ in range(2)]
        for member in members:
            member.subscribe("$share/pool/tasks/#", 1)
        pub = Client()
        for i in range(12):
            pub.publish("tasks/n", str(i).encode(), 1)
        got = [m.payload for member in members for m in member.drain()]
        self.assertEqual(sorted(got, key=int), [str(i).encode() for i in range(12)])
        for member in members + [pub]:
            member.close()

    def test_connack_tells_the_client_what_the_broker_allows(self):
        client = Client(client_id="")
        properties = client.connack_properties
        self.assertTrue(properties.AssignedClientIdentifier.startswith("auto-"))
        self.assertEqual(properties.TopicAliasMaximum, 10)
        self.assertEqual(properties.ReceiveMaximum, 20)
        client.close()

    def test_disconnect_0x04_sends_the_will_with_its_properties(self):
        watcher = Client()
        watcher.subscribe("will5/#", 1)
        properties = Properties(PacketTypes.WILLMESSAGE)
        properties.UserProperty = [("why", "gone")]
        properties.ContentType = "text/plain"
        leaving = Client(will=("will5/x", b"bye", 1, False, properties))
        leaving.mqtt.disconnect(
            reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
        )
        leaving.mqtt.loop_stop()
        got = watcher.receive()
        self.assertEqual(got.payload, b"bye")
        self.assertEqual(got.properties.UserProperty, [("why", "gone")])
        self.assertEqual(got.properties.ContentType, "text/plain")
        watcher.close()

    def test_topic_aliases_from_the_client_and_message_expiry_counting_down(self):
        client_id = offline_session("alias", "alias5/#")
        pub = Client()
        properties = Properties(PacketTypes.PUBLISH)
        properties.TopicAlias = 3
        properties.MessageExpiryInterval = 60
        pub.publish("alias5/long/topic", b"one", 1, properties=properties)
        pub.publish("", b"two", 1, properties=properties)  # the alias alone names the topic
        time.sleep(1.2)
        back = Client(client_id, clean_start=False, expiry=30)
        got = [back.receive(), back.receive()]
        self.assertEqual([(m.topic, m.payload) for m in got],
                         [("alias5/long/topic", b"one"), ("alias5/long/topic", b"two")])
        for message in got:
            self.assertLess(message.properties.MessageExpiryInterval, 60)
        back.close()
        pub.close()

    def test_puback_reason_codes_and_reason_strings(self):
        pub = Client()
        rc, _ = pub.publish("nobody5/here", b"x", 1)
        self.assertEqual(rc.value, 0x10)  # no matching subscribers, as Mosquitto says
        properties = Properties(PacketTypes.PUBLISH)
        properties.PayloadFormatIndicator = 1
        rc, acked = pub.publish("nobody5/here", b"\xff\xfe", 1, properties=properties)
        self.assertEqual(rc.value, 0x99)
        self.assertEqual(acked.ReasonString, "payload format invalid")
        pub.close()

    def test_a_taken_over_client_hears_0x8e(self):
        client_id = f"paho5-twice-{uuid.uuid4().hex[:6]}"
        first = Client(client_id)
        second = Client(client_id)
        rc, properties = first.disconnects.get(timeout=WAIT)
        first.mqtt.loop_stop()  # before paho's automatic reconnect takes the id back
        self.assertEqual(rc.value, 0x8E)
        self.assertEqual(properties.ReasonString, "session taken over")
        second.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
