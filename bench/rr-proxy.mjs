// A round-robin HTTP proxy for bench/s3.sh: each request goes to the next upstream in turn.
// usage: node bench/rr-proxy.mjs PORT UPSTREAM1 UPSTREAM2 [...]   (upstreams as host:port or http://host:port)
// Bodies are streamed both ways; status and headers are passed through (minus hop-by-hop ones).
// The Host header is passed unchanged, so a server that builds absolute URLs from it points
// them back at the proxy; an absolute Location naming an upstream is rewritten to the proxy too.
// An upstream that refuses the connection is skipped (the request body is only read once the
// connection is up, so nothing is lost); when all refuse, the answer is 502.
import http from 'node:http';

const [portArg, ...ups] = process.argv.slice(2);
if (!portArg || ups.length < 1) {
  console.error('usage: rr-proxy.mjs PORT UPSTREAM1 UPSTREAM2 [...]');
  process.exit(2);
}
const upstreams = ups.map((u) => {
  const url = new URL(u.includes('://') ? u : `http://${u}`);
  return { hostname: url.hostname, port: Number(url.port || 80), hostport: url.host };
});
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade']);
let next = 0;
const counts = upstreams.map(() => 0);

function strip(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP.has(k)) out[k] = v;
  return out;
}

function forward(req, res, tries) {
  const i = next++ % upstreams.length;
  const up = upstreams[i];
  const headers = strip(req.headers);
  // a body without Content-Length goes on chunked
  if (req.headers['transfer-encoding']) headers['transfer-encoding'] = 'chunked';
  const upReq = http.request({ agent, hostname: up.hostname, port: up.port, method: req.method, path: req.url, headers });
  let started = false;
  const start = () => {
    started = true;
    counts[i]++;
    req.pipe(upReq);
  };
  upReq.on('socket', (s) => (s.connecting ? s.once('connect', start) : start()));
  upReq.on('response', (upRes) => {
    const h = strip(upRes.headers);
    if (h.location) {
      try {
        const loc = new URL(h.location);
        if (upstreams.some((u) => u.hostport === loc.host) && req.headers.host) {
          loc.host = req.headers.host;
          h.location = loc.toString();
        }
      } catch {
        // relative: already points through the proxy
      }
    }
    res.writeHead(upRes.statusCode, upRes.statusMessage, h);
    upRes.pipe(res);
    upRes.on('error', () => res.destroy());
  });
  upReq.on('error', (e) => {
    if (!started && e.code === 'ECONNREFUSED' && tries + 1 < upstreams.length) return forward(req, res, tries + 1);
    if (!res.headersSent) {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`rr-proxy: upstream ${up.hostport}: ${e.code || e.message}\n`);
    } else res.destroy();
  });
  req.on('aborted', () => upReq.destroy());
  res.on('close', () => {
    if (!res.writableFinished) upReq.destroy();
  });
}

const server = http.createServer((req, res) => forward(req, res, 0));
server.requestTimeout = 0; // a slow 8 MiB PATCH is not a stuck one
server.headersTimeout = 60_000;
server.keepAliveTimeout = 65_000;
server.listen(Number(portArg), '127.0.0.1', () => {
  console.error(`rr-proxy on 127.0.0.1:${portArg} -> ${upstreams.map((u) => u.hostport).join(', ')}`);
});
const report = () => {
  console.error(`rr-proxy: requests per upstream ${upstreams.map((u, i) => `${u.hostport}=${counts[i]}`).join(' ')}`);
  process.exit(0);
};
process.on('SIGTERM', report);
process.on('SIGINT', report);
