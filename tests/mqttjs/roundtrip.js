// MQTT.js (the browsers' MQTT client) against a running Culex over ws or wss: subscribe, publish
// at QoS 0, 1 and 2, receive each back. Run by tests/websockets.rs with MQTTJS (the package's
// path), URL, CAFILE and PROTOCOL_VERSION (4 or 5) in the environment.
const fs = require("fs");
const mqtt = require(process.env.MQTTJS);

const options = {
  protocolVersion: Number(process.env.PROTOCOL_VERSION),
  ca: fs.readFileSync(process.env.CAFILE),
  clientId: `mqttjs-${process.pid}`,
  reconnectPeriod: 0,
};
const topic = `js/${process.pid}`;
const expected = [0, 1, 2].map((qos) => `payload at qos ${qos}`);
const received = [];
let done = false;
const client = mqtt.connect(process.env.URL, options);
const timer = setTimeout(() => {
  console.log(`timeout; received ${JSON.stringify(received)}`);
  process.exit(1);
}, 5000);
client.on("error", (error) => {
  if (done) return;
  console.log(`error: ${error.message}`);
  process.exit(1);
});
client.on("connect", () => {
  client.subscribe(`${topic}/#`, { qos: 2 }, (error) => {
    if (error) throw error;
    [0, 1, 2].forEach((qos) => client.publish(`${topic}/${qos}`, expected[qos], { qos }));
  });
});
client.on("message", (_topic, payload) => {
  received.push(payload.toString());
  if (received.length === expected.length) {
    received.sort();
    if (JSON.stringify(received) !== JSON.stringify(expected)) {
      console.log(`wrong messages: ${JSON.stringify(received)}`);
      process.exit(1);
    }
    console.log("round trip ok");
    done = true;
    clearTimeout(timer);
    client.end(false, () => process.exit(0));
  }
});
