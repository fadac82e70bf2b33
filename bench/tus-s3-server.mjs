// @tus/server with @tus/s3-store, the reference peer of bench/s3.sh.
// usage: node bench/tus-s3-server.mjs PORT BUCKET [PREFIX]
//   S3 endpoint from ROBUSTO_BENCH_S3_ENDPOINT (default http://127.0.0.1:7480), path-style,
//   region us-east-1, credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; 8 MiB parts;
//   SDK checksums only when required (see below).
//   @tus/s3-store 2.0.7 has no key prefix of its own: PREFIX is put in front of every upload id
//   (namingFunction), so it must be URL-safe and contain no '/' (e.g. "tus-run1-").
import crypto from 'node:crypto';
import { Server } from '@tus/server';
import { S3Store } from '@tus/s3-store';

const [port, bucket, prefix = ''] = process.argv.slice(2);
if (!port || !bucket || prefix.includes('/')) {
  console.error('usage: tus-s3-server.mjs PORT BUCKET [PREFIX without /]');
  process.exit(2);
}
const { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey } = process.env;
if (!accessKeyId || !secretAccessKey) {
  console.error('tus-s3-server.mjs: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY');
  process.exit(2);
}
const datastore = new S3Store({
  partSize: 8 * 1024 * 1024,
  s3ClientConfig: {
    bucket,
    endpoint: process.env.ROBUSTO_BENCH_S3_ENDPOINT || 'http://127.0.0.1:7480',
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId, secretAccessKey },
    // aws-sdk >= 3.729 sends streamed bodies (UploadPart from the part file) as aws-chunked with
    // a CRC32 trailer by default, which Ceph 16.2 radosgw rejects (every PATCH fails with 500):
    // checksums only where an operation requires them, as for other S3-compatible stores
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  },
});
const server = new Server({
  path: '/files',
  datastore,
  namingFunction: () => prefix + crypto.randomBytes(16).toString('hex'),
});
server.listen({ host: '127.0.0.1', port: Number(port) }, () => {
  console.error(`@tus/server + @tus/s3-store listening on http://127.0.0.1:${port}/files (s3://${bucket}/${prefix})`);
});
