"""Uploads one file with tuspy (tusclient), as an application using that library would.

usage: .venv/bin/python interop/tuspy_upload.py ENDPOINT FILE CHUNK_SIZE [options]
  --checksum           send Upload-Checksum (tuspy's upload_checksum=True: sha1) on every PATCH
  --stop-after N       upload N chunks, then resume the same upload with a new uploader by URL
  --meta KEY=VALUE     Upload-Metadata entry (repeatable)
Prints {"url": ..., "resumed": bool} on stdout; exits 1 on failure.
"""

import json
import sys

from tusclient import client


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, path, chunk_size = argv[0], argv[1], int(argv[2])
    checksum = False
    stop_after = None
    metadata = {}
    rest = argv[3:]
    i = 0
    while i < len(rest):
        if rest[i] == "--checksum":
            checksum = True
        elif rest[i] == "--stop-after":
            i += 1
            stop_after = int(rest[i])
        elif rest[i] == "--meta":
            i += 1
            key, _, value = rest[i].partition("=")
            metadata[key] = value
        i += 1
    tus = client.TusClient(endpoint)
    uploader = tus.uploader(path, chunk_size=chunk_size, metadata=metadata, upload_checksum=checksum)
    resumed = False
    if stop_after is not None:
        for _ in range(stop_after):
            uploader.upload_chunk()
        # A new uploader for the same URL: it asks the server (HEAD) where to go on.
        uploader = tus.uploader(path, chunk_size=chunk_size, url=uploader.url, upload_checksum=checksum)
        resumed = True
    uploader.upload()
    if uploader.offset != uploader.get_file_size():
        print(f"tuspy stopped at {uploader.offset} of {uploader.get_file_size()}", file=sys.stderr)
        return 1
    print(json.dumps({"url": uploader.url, "resumed": resumed}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as e:  # noqa: BLE001 - report any client failure as exit 1
        print(f"tuspy failed: {e!r}", file=sys.stderr)
        sys.exit(1)
