// The fan-out benchmark's `bun` server: Bun.serve with its built-in topics, the way Bun's
// docs show publish/subscribe. Sockets upgraded on /sub subscribe to one topic; every message
// that arrives on /pub is published to it with `server.publish`, which frames it once for all
// subscribers. Every other setting is Bun's default (no compression, its default
// backpressure limit).
//
//   bun run bench/bun/fanout.js   (started by `bench fanout-server bun`, pinned to one CPU)
//
// Prints `READY pid=<pid> addr=127.0.0.1:<port>` once listening, like the Rust servers.

const TOPIC = "fanout";

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.FANOUT_PORT ?? 0),
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (server.upgrade(req, { data: { path } })) {
      return undefined;
    }
    return new Response("not a WebSocket", { status: 400 });
  },
  websocket: {
    perMessageDeflate: false,
    open(ws) {
      if (ws.data.path === "/sub") {
        ws.subscribe(TOPIC);
      }
    },
    message(ws, message) {
      if (ws.data.path === "/pub") {
        server.publish(TOPIC, message);
      }
    },
  },
});

console.log(`READY pid=${process.pid} addr=127.0.0.1:${server.port}`);
