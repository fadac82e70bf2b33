// A link that breaks: a TCP proxy on 127.0.0.1 that forwards to 127.0.0.1:TARGET and cuts
// every connection open each time N more bytes have crossed it from clients to the server (the
// bytes up to the cut are delivered, none after it). Responses pass untouched.
// Usage: node bench/cut-proxy.mjs TARGET_PORT CUT_EVERY_BYTES
// Prints its port on stdout; on SIGTERM prints {"bytes": B, "cuts": C} (B: client→server bytes
// that crossed the link, headers included) and exits.
import net from 'node:net';

const target = Number.parseInt(process.argv[2], 10);
const every = Number.parseInt(process.argv[3], 10);
if (!target || !every) {
  console.error('usage: node bench/cut-proxy.mjs TARGET_PORT CUT_EVERY_BYTES');
  process.exit(2);
}
let carried = 0; // since the last cut
let bytes = 0;
let cuts = 0;
const open = new Set();

function cutAll() {
  cuts += 1;
  carried = 0;
  for (const [client, upstream] of open) {
    client.destroy();
    upstream.destroy();
  }
  open.clear();
}

const server = net.createServer((client) => {
  const upstream = net.connect(target, '127.0.0.1');
  const pair = [client, upstream];
  open.add(pair);
  client.on('data', (buf) => {
    const room = every - carried;
    if (buf.length >= room) {
      bytes += room;
      // The bytes before the cut reach the server, then both ends go.
      upstream.end(buf.subarray(0, room), () => cutAll());
      client.pause();
      return;
    }
    carried += buf.length;
    bytes += buf.length;
    if (!upstream.write(buf)) {
      client.pause();
      upstream.once('drain', () => client.resume());
    }
  });
  upstream.on('data', (buf) => {
    if (!client.write(buf)) {
      upstream.pause();
      client.once('drain', () => upstream.resume());
    }
  });
  const close = () => {
    open.delete(pair);
    client.destroy();
    upstream.destroy();
  };
  client.on('error', close);
  upstream.on('error', close);
  client.on('end', () => upstream.end());
  upstream.on('end', () => client.end());
  client.on('close', close);
  upstream.on('close', close);
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
process.on('SIGTERM', () => {
  console.log(JSON.stringify({ bytes, cuts }));
  process.exit(0);
});
