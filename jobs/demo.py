"""make demo: the main job on the embedded default.

Starts an S3-compatible server on loopback, curates the sample videos into a bucket on it, and prints where the
report is. (Later parts of the system - captions, subjects, training, generation - join this demo as they land.)
"""

from __future__ import annotations

import sys
from pathlib import Path

from .loopback_s3 import loopback_s3

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
OUT = ROOT / "out" / "demo"


def main() -> int:
    with loopback_s3("demo") as endpoint:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
