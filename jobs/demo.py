"""make demo: the main job on the embedded default.

Starts an S3-compatible server on loopback, curates the sample videos into a bucket on it, and prints where the
report is. (Later parts of the system - captions, subjects, training, generation - join this demo as they land.)
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
OUT = ROOT / "out" / "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise

    # Throw-away credentials for the loopback server only.
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="cinema")
        from curation.__main__ import main as curation_main

        rc = curation_main(["run", str(ROOT / "jobs" / "demo_curation.yaml"), "--input", str(VIDEOS),
                            "--output", "s3://cinema/dataset", "--set", f"storage.endpoint_url={endpoint}"])
        if rc:
            return rc
        # The bucket disappears with the server: keep a local copy of what people look at.
        from curation.config import StorageConfig
        from curation.storage import Storage

        storage = Storage(StorageConfig(endpoint_url=endpoint))
        OUT.mkdir(parents=True, exist_ok=True)
        for name in ("report.html", "contact_sheet.png"):
            (OUT / name).write_bytes(storage.read_bytes(f"s3://cinema/dataset/{name}"))
        shards = storage.list("s3://cinema/dataset/shards", ".tar")
        print(f"\ndataset written to s3://cinema/dataset on {endpoint}: {len(shards)} shard(s)")
        print(f"report:        {OUT / 'report.html'}")
        print(f"contact sheet: {OUT / 'contact_sheet.png'}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
