// MQTT.js (protocol 5) against a running hub: each scenario drives real MQTT.js clients and prints one JSON
// line of what they saw; tests/test_mqtt5_mqttjs.py asserts on those lines and on the hub's database.
//
//   node scenarios.cjs '<config JSON>'
//
// config: {url, wsPath?, device: {username, password, topics: {data, cmd, reply}}, service: {username,
// password}, other: a device topic this device may not publish to}. A line "ready <name>" asks the test
// to act (send a command); the test answers on stdin with a line.
"use strict";

const mqtt = require("mqtt");
const readline = require("readline");

const config = JSON.parse(process.argv[2]);
const input = readline.createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

function out(name, result) {
  process.stdout.write(JSON.stringify({ scenario: name, ...result }) + "\n");
}

async function connect(credentials, options = {}) {
  const client = await mqtt.connectAsync(config.url, {
    protocolVersion: 5,
    username: credentials.username,
    password: credentials.password,
    clientId: options.clientId ?? credentials.username,
    reconnectPeriod: 0,
    connectTimeout: 10000,
    ...options,
  });
  return client;
}

function nextMessages(client, count, timeout = 10000) {
  return new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => reject(new Error(`timed out with ${got.length}/${count} messages`)), timeout);
    client.on("message", (topic, payload, packet) => {
      got.push({ topic, payload: payload.toString(), qos: packet.qos, properties: plain(packet.properties) });
      if (got.length === count) {
        clearTimeout(timer);
        resolve(got);
      }
    });
  });
}

function plain(properties) {
  const out = {};
  for (const [name, value] of Object.entries(properties || {})) {
    out[name] = Buffer.isBuffer(value) ? value.toString() : value;
  }
  return out;
}

async function publishCode(client, topic, payload, options) {
  try {
    await client.publishAsync(topic, payload, options);
    return 0;
  } catch (error) {
    return error.code ?? String(error);
  }
}

const scenarios = {
  async properties() {
    const watcher = await connect(config.service, { clientId: "js-watcher" });
    const granted = await watcher.subscribeAsync(config.device.topics.data, {
      qos: 1,
      properties: { subscriptionIdentifier: 42 },
    });
    const messages = nextMessages(watcher, 1);
    const device = await connect(config.device);
    const code = await publishCode(device, config.device.topics.data, JSON.stringify({ temperature: 21.5 }), {
      qos: 1,
      properties: {
        contentType: "application/json",
        payloadFormatIndicator: true,
        correlationData: Buffer.from("batch-7"),
        userProperties: { site: "north", shift: "night" },
      },
    });
    const [message] = await messages;
    await Promise.all([watcher.endAsync(), device.endAsync()]);
    return { granted: granted.map((g) => g.qos), code, message };
  },

  async reasonCodes() {
    const device = await connect(config.device);
    const refused = await publishCode(device, config.other, "{}", { qos: 1 });
    const badFormat = await publishCode(device, config.device.topics.data, Buffer.from([0xff, 0xfe]), {
      qos: 1,
      properties: { payloadFormatIndicator: true },
    });
    const stored = await publishCode(device, config.device.topics.data, JSON.stringify({ temperature: 1 }), {
      qos: 1,
    });
    const connected = device.connected;
    await device.endAsync();
    let connack = null;
    try {
      await connect({ username: config.service.username, password: "wrong" }, { clientId: "js-wrong" });
    } catch (error) {
      connack = error.code ?? String(error);
    }
    return { refused, badFormat, stored, connected, connack };
  },

  async sessionExpiry() {
    const options = { clientId: "js-persist", clean: false, properties: { sessionExpiryInterval: 60 } };
    const first = await connect(config.service, options);
    await first.subscribeAsync("lab/persist", { qos: 1 });
    await first.endAsync();
    const publisher = await connect(config.service, { clientId: "js-publisher" });
    await publisher.publishAsync("lab/persist", "while you were away", { qos: 1 });
    await publisher.endAsync();
    const second = mqtt.connect(config.url, {
      protocolVersion: 5,
      username: config.service.username,
      password: config.service.password,
      reconnectPeriod: 0,
      ...options,
    });
    const messages = nextMessages(second, 1);
    const connack = await new Promise((resolve) => second.once("connect", resolve));
    const [message] = await messages;
    await second.endAsync();
    return { sessionPresent: connack.sessionPresent, message };
  },

  async topicAliases() {
    const receiver = await connect(config.service, {
      clientId: "js-alias-receiver",
      properties: { topicAliasMaximum: 5 },
    });
    await receiver.subscribeAsync("lab/alias/#", { qos: 1 });
    const messages = nextMessages(receiver, 3);
    const sender = await connect(config.service, { clientId: "js-alias-sender" });
    const maximum = sender.topicAliasSend ? sender.topicAliasSend.max : null;
    const codes = [];
    codes.push(await publishCode(sender, "lab/alias/long/topic/name", "1", { qos: 1, properties: { topicAlias: 1 } }));
    codes.push(await publishCode(sender, "", "2", { qos: 1, properties: { topicAlias: 1 } }));
    codes.push(await publishCode(sender, "", "3", { qos: 1, properties: { topicAlias: 1 } }));
    const received = await messages;
    await Promise.all([receiver.endAsync(), sender.endAsync()]);
    return { maximum, codes, received };
  },

  async sharedSubscriptions() {
    const members = [];
    const counts = [];
    for (const index of [0, 1]) {
      const member = await connect(config.service, { clientId: `js-member-${index}` });
      await member.subscribeAsync("$share/js/lab/shared/#", { qos: 1 });
      counts.push([]);
      member.on("message", (topic) => counts[index].push(topic));
      members.push(member);
    }
    const publisher = await connect(config.service, { clientId: "js-shared-publisher" });
    for (let n = 0; n < 6; n++) {
      await publisher.publishAsync(`lab/shared/${n}`, String(n), { qos: 1 });
    }
    const deadline = Date.now() + 10000;
    while (counts[0].length + counts[1].length < 6 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await new Promise((resolve) => setTimeout(resolve, 200)); // no extra copies trail behind
    await Promise.all([...members, publisher].map((client) => client.endAsync()));
    return { counts };
  },

  async requestResponse() {
    // Between two MQTT 5 clients: the requester's Response Topic and Correlation Data travel with the
    // request, and the reply comes back on that topic with the same Correlation Data.
    const responder = await connect(config.service, { clientId: "js-responder" });
    await responder.subscribeAsync("lab/requests", { qos: 1 });
    responder.on("message", (topic, payload, packet) => {
      const { responseTopic, correlationData } = packet.properties;
      responder.publish(responseTopic, "answer to " + payload, { qos: 1, properties: { correlationData } });
    });
    const requester = await connect(config.service, { clientId: "js-requester" });
    await requester.subscribeAsync("lab/responses/js-requester", { qos: 1 });
    const replies = nextMessages(requester, 1);
    await requester.publishAsync("lab/requests", "what time is it", {
      qos: 1,
      properties: { responseTopic: "lab/responses/js-requester", correlationData: Buffer.from("req-1") },
    });
    const [reply] = await replies;
    await Promise.all([responder.endAsync(), requester.endAsync()]);

    // With the hub: a command arrives with Correlation Data and a Response Topic; the device answers on
    // that topic with the same Correlation Data and no correlation id in its JSON.
    const device = await connect(config.device, { properties: { requestResponseInformation: true } });
    const responseInformation = device.connackPacket?.properties?.responseInformation ?? null;
    await device.subscribeAsync(config.device.topics.cmd, { qos: 1 });
    const commands = nextMessages(device, 1, 20000);
    out("ready", { for: "command" });
    await lines.next(); // the test has sent the command
    const [command] = await commands;
    const raw = command.properties;
    const correlationData = Buffer.from(raw.correlationData);
    const code = await publishCode(device, raw.responseTopic, JSON.stringify({ status: "ok", result: "done" }), {
      qos: 1,
      properties: { correlationData },
    });
    await device.endAsync();
    return { reply, command, responseInformation, replyCode: code };
  },
};

(async () => {
  for (const name of config.scenarios || Object.keys(scenarios)) {
    try {
      out(name, { result: await scenarios[name]() });
    } catch (error) {
      out(name, { error: String(error && error.stack ? error.stack : error) });
    }
  }
  input.close();
  process.exit(0);
})();
