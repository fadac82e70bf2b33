// Uploads one file with tus-js-client (Node), as an application using that library would.
// usage: node interop/tus-js-upload.mjs ENDPOINT FILE CHUNK_SIZE [options]
//   --abort-at BYTES      abort once BYTES are acknowledged, then resume the same upload by URL
//   --parallel N          parallelUploads (the concatenation extension)
//   --creation-data       uploadDataDuringCreation (creation-with-upload)
//   --meta KEY=VALUE      Upload-Metadata entry (repeatable)
// Prints {"url": …, "resumed": bool} on stdout; exits 1 on failure.
import fs from 'node:fs';
import * as tus from 'tus-js-client';

const [endpoint, file, chunkArg, ...rest] = process.argv.slice(2);
if (!endpoint || !file || !chunkArg) {
  console.error('usage: tus-js-upload.mjs ENDPOINT FILE CHUNK_SIZE [--abort-at N] [--parallel N] [--creation-data] [--meta k=v]');
  process.exit(2);
}
const chunkSize = chunkArg === 'Infinity' ? Infinity : Number(chunkArg);
let abortAt = null;
let parallel = 1;
let creationData = false;
const metadata = {};
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === '--abort-at') abortAt = Number(rest[++i]);
  else if (rest[i] === '--parallel') parallel = Number(rest[++i]);
  else if (rest[i] === '--creation-data') creationData = true;
  else if (rest[i] === '--meta') {
    const [k, ...v] = rest[++i].split('=');
    metadata[k] = v.join('=');
  }
}
const size = fs.statSync(file).size;

function run(uploadUrl, stopAt) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(fs.createReadStream(file), {
      endpoint,
      uploadUrl,
      chunkSize,
      uploadSize: parallel > 1 ? null : size,
      metadata,
      parallelUploads: parallel,
      uploadDataDuringCreation: creationData,
      retryDelays: [0, 200, 500],
      onChunkComplete(_chunk, accepted) {
        if (stopAt != null && accepted >= stopAt) {
          upload.abort(false).then(() => resolve({ url: upload.url, aborted: true }));
        }
      },
      onError: reject,
      onSuccess: () => resolve({ url: upload.url, aborted: false }),
    });
    upload.start();
  });
}

try {
  let r = await run(null, abortAt);
  let resumed = false;
  if (r.aborted) {
    r = await run(r.url, null);
    resumed = true;
  }
  console.log(JSON.stringify({ url: r.url, resumed }));
} catch (e) {
  console.error(`tus-js-client failed: ${e}`);
  process.exit(1);
}
