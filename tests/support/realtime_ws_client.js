// A browser app's use of cozyd's realtime, with the `ws` package from npm.
//
//   node realtime_ws_client.js <config.json>
//
// config: {"url": "ws://127.0.0.1:PORT/realtime/", "host": "alice.cozy.localhost",
//          "token": "...", "commands": [{"method": "SUBSCRIBE", ...}, ...]}
// (NODE_PATH must point at the node_modules holding `ws`.)
//
// Opens the websocket with the io.cozy.websocket sub-protocol, sends AUTH
// and the commands, then prints one JSON line per thing that happens:
// {"open": "<protocol>"}, {"message": <the server's JSON>}, {"close": code,
// "reason": "..."}. A line on stdin is a command to send as it is (JSON);
// stdin closing ends the connection normally.

"use strict";

const fs = require("fs");
const readline = require("readline");
const WebSocket = require("ws");

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const say = (what) => process.stdout.write(JSON.stringify(what) + "\n");

const socket = new WebSocket(config.url, ["io.cozy.websocket"], {
  headers: { Host: config.host },
  perMessageDeflate: false,
});

socket.on("open", () => {
  say({ open: socket.protocol });
  if (config.token !== undefined) {
    socket.send(JSON.stringify({ method: "AUTH", payload: config.token }));
  }
  for (const command of config.commands || []) {
    socket.send(JSON.stringify(command));
  }
  say({ sent: (config.commands || []).length });
});

socket.on("message", (data, isBinary) => {
  say({ message: JSON.parse(data.toString("utf8")), binary: isBinary });
});

socket.on("close", (code, reason) => {
  say({ close: code, reason: reason.toString("utf8") });
  process.exit(0);
});

socket.on("error", (error) => {
  say({ error: String(error) });
});

const input = readline.createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (line.trim()) socket.send(line);
});
input.on("close", () => socket.close(1000, "bye"));
