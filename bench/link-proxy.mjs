// The round trip of a slow link, in userspace, for bench/link.sh: a TCP proxy on 127.0.0.1:LISTEN
// that forwards to 127.0.0.1:TARGET through a delay line in each direction. Every piece of data
// is held DELAY_MS (half the round trip) after it arrived, then forwarded; the pieces behind it
// keep coming meanwhile (a delay line, not stop-and-wait), so the throughput is the link's (the
// rate limit is bench/link.sh's tbf, on the client↔proxy hop). A new connection is held one
// round trip (2 × DELAY_MS) before its first byte is read, as TCP's handshake would cost.
// With CUT_EVERY_BYTES, each time that many more bytes came from the clients, every connection
// is cut at once (reset both ends; what was in flight in the delay lines is lost, as on a link
// that breaks); clients may reconnect right away.
// Usage: node bench/link-proxy.mjs LISTEN_PORT TARGET_PORT DELAY_MS [CUT_EVERY_BYTES]
// Prints "ready" on stdout once listening; on SIGTERM prints
// {"up": B, "down": B, "cuts": C, "conns": N} (payload bytes client→server and server→client that
// entered the link, TCP/IP headers not included) and exits.
import net from 'node:net';

const [listen, target, delayMs] = process.argv.slice(2, 5).map((s) => Number.parseInt(s, 10));
const every = Number.parseInt(process.argv[5] ?? '0', 10) || 0;
if (!listen || !target || !(delayMs >= 0)) {
  console.error('usage: node bench/link-proxy.mjs LISTEN_PORT TARGET_PORT DELAY_MS [CUT_EVERY_BYTES]');
  process.exit(2);
}
// Bytes a delay line holds before it stops reading its source: well above rate × delay for
// any link this emulates (1 Gbit/s × 40 ms = 5 MB), so it never limits the rate itself.
const HIGH = 32 << 20;
let up = 0;
let down = 0;
let cuts = 0;
let conns = 0;
let carried = 0; // client→server bytes since the last cut
const open = new Set();

// One direction of one connection: src → (held delayMs) → dst.
class DelayLine {
  constructor(src, dst) {
    this.src = src;
    this.dst = dst;
    this.queue = [];
    this.head = 0;
    this.held = 0;
    this.timer = null;
    this.blocked = false; // dst's buffer is full: wait for 'drain'
    this.ended = false; // src ended: end dst once the queue is empty
    this.dead = false;
    dst.on('drain', () => {
      this.blocked = false;
      this.flush();
    });
  }

  push(buf) {
    this.queue.push({ buf, due: performance.now() + delayMs });
    this.held += buf.length;
    if (this.held > HIGH) this.src.pause();
    this.schedule();
  }

  end() {
    this.ended = true;
    this.schedule();
  }

  schedule() {
    if (this.timer || this.blocked || this.dead) return;
    if (this.head === this.queue.length) {
      if (this.ended) this.dst.end();
      return;
    }
    const wait = Math.max(0, this.queue[this.head].due - performance.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, wait);
  }

  flush() {
    if (this.dead) return;
    const now = performance.now();
    while (this.head < this.queue.length && this.queue[this.head].due <= now + 0.5) {
      const { buf } = this.queue[this.head];
      this.queue[this.head] = null;
      this.head += 1;
      this.held -= buf.length;
      if (!this.dst.write(buf)) {
        this.blocked = true;
        break;
      }
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    if (this.held <= HIGH / 2 && this.src.isPaused()) this.src.resume();
    this.schedule();
  }

  kill() {
    this.dead = true;
    if (this.timer) clearTimeout(this.timer);
    this.queue = [];
    this.head = 0;
    this.held = 0;
  }
}

function reset(sock) {
  if (typeof sock.resetAndDestroy === 'function' && !sock.destroyed && sock.readyState !== 'opening') {
    sock.resetAndDestroy();
  } else {
    sock.destroy();
  }
}

function cutAll() {
  cuts += 1;
  carried = 0;
  for (const conn of open) conn.close(true);
  open.clear();
}

const server = net.createServer({ noDelay: true }, (client) => {
  conns += 1;
  client.pause();
  const upstream = net.connect({ port: target, host: '127.0.0.1', noDelay: true });
  const toServer = new DelayLine(client, upstream);
  const toClient = new DelayLine(upstream, client);
  const conn = {
    closed: false,
    close(hard) {
      if (this.closed) return;
      this.closed = true;
      open.delete(conn);
      toServer.kill();
      toClient.kill();
      if (hard) {
        reset(client);
        reset(upstream);
      } else {
        client.destroy();
        upstream.destroy();
      }
    },
  };
  open.add(conn);
  // the handshake's round trip
  setTimeout(() => {
    if (!conn.closed) client.resume();
  }, 2 * delayMs);
  client.on('data', (buf) => {
    if (conn.closed) return;
    if (every) {
      const room = every - carried;
      if (buf.length >= room) {
        up += room;
        cutAll();
        return;
      }
      carried += buf.length;
    }
    up += buf.length;
    toServer.push(buf);
  });
  upstream.on('data', (buf) => {
    if (conn.closed) return;
    down += buf.length;
    toClient.push(buf);
  });
  client.on('end', () => toServer.end());
  upstream.on('end', () => toClient.end());
  const gone = () => conn.close(false);
  client.on('error', gone);
  upstream.on('error', gone);
  // a half-closed side still delivers what its delay line holds; both closed: done
  let closedSides = 0;
  const sideClosed = () => {
    closedSides += 1;
    if (closedSides === 2) conn.close(false);
  };
  client.on('close', sideClosed);
  upstream.on('close', sideClosed);
});
server.listen(listen, '127.0.0.1', () => console.log('ready'));
process.on('SIGTERM', () => {
  console.log(JSON.stringify({ up, down, cuts, conns }));
  process.exit(0);
});
