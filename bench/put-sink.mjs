// A trivial HTTP sink for `curl -T` reference figures: reads and discards every request body.
// Usage: node bench/put-sink.mjs PORT
import http from 'node:http';

const port = Number.parseInt(process.argv[2] ?? '0', 10);
const server = http.createServer((req, res) => {
  let n = 0;
  req.on('data', (b) => { n += b.length; });
  req.on('end', () => { res.writeHead(201, { 'content-type': 'text/plain' }); res.end(`${n}\n`); });
});
server.listen(port, '127.0.0.1', () => console.log(server.address().port));
process.on('SIGTERM', () => process.exit(0));
