// A stock @tus/server with @tus/file-store, for robusto's interop tests and benchmarks.
// Usage: node interop/tus-server.mjs DATA_DIR [PORT]  — prints the port it listens on (127.0.0.1).
import http from 'node:http';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

const dir = process.argv[2];
const port = Number.parseInt(process.argv[3] ?? '0', 10);
if (!dir) {
  console.error('usage: node interop/tus-server.mjs DATA_DIR [PORT]');
  process.exit(2);
}
const tus = new Server({ path: '/files', datastore: new FileStore({ directory: dir }) });
const server = http.createServer((req, res) => tus.handle(req, res));
server.listen(port, '127.0.0.1', () => {
  console.log(server.address().port);
});
process.on('SIGTERM', () => process.exit(0));
