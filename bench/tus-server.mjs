// @tus/server with the FileStore, the reference peer of bench/serve.sh.
// usage: node bench/tus-server.mjs PORT DIR
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

const [port, dir] = process.argv.slice(2);
const server = new Server({ path: '/files', datastore: new FileStore({ directory: dir }) });
server.listen({ host: '127.0.0.1', port: Number(port) }, () => {
  console.error(`@tus/server listening on http://127.0.0.1:${port}/files`);
});
