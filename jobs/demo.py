"""make demo: the main job end to end on the embedded default, on this machine alone.

1. builds the tiny models (curation's captioner, detector and SAM; the CINEMA model's frozen parts) offline;
2. starts an S3-compatible server on loopback and curates the sample videos into s3://cinema/dataset with every
   stage (scenes, clips, burned-in text, captions, subjects), then finds its near duplicates;
3. trains the tiny CINEMA model with 2 FSDP2 ranks (gloo) streaming those shards from the bucket, in the paper's
   two stages (the AlignerNet on captions, then AlignerNet + DiT), with a validation split held out by source;
4. generates a video from a prompt and two subject crops taken out of the dataset;
and prints where the report, the contact sheets, the loss curve and the video are, and the commands to look at
each. The bucket goes with the server, so the dataset is mirrored to out/demo/dataset first.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .loopback_s3 import free_port, loopback_s3

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
OUT = ROOT / "out" / "demo"
DATASET = OUT / "dataset"
TINY = OUT / "tiny_models"  # python -m tiny_models writes the same layout
CINEMA_TINY = TINY / "cinema"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def build_tiny_models() -> dict:
    from tiny_models.cinema_checkpoints import save_tiny_checkpoints
    from tiny_models.curation_models import save_tiny_models

    paths = save_tiny_models(TINY / "curation")
    save_tiny_checkpoints(CINEMA_TINY)
    return paths


def curate(endpoint: str, paths: dict) -> int:
    from curation.__main__ import main as curation_main
    from tiny_models.curation_models import tiny_overrides

    sets = [f"storage.endpoint_url={endpoint}", *tiny_overrides(paths, fixed_answer=True)]
    return curation_main(["run", str(ROOT / "jobs" / "demo_curation.yaml"), "--input", str(VIDEOS),
                          "--output", "s3://cinema/dataset", *[a for s in sets for a in ("--set", s)]])


def dedup(endpoint: str) -> int:
    """Near duplicates by fingerprint: the tiny CLIP's random weights give every clip about the same embedding, so
    its signal is off here (a real CLIP's is on by default)."""
    from curation.__main__ import main as curation_main

    return curation_main(["dedup", "s3://cinema/dataset", "--job", str(ROOT / "jobs" / "demo_curation.yaml"),
                          "--set", f"storage.endpoint_url={endpoint}", "--set", "dedup.embedding_similarity=null"])


def identities(endpoint: str) -> int:
    """Subjects matched across the clips of each source, which the trainer's default reference mode (other_clip)
    reads. The tiny CLIP's random weights make unrelated crops look alike, so the demo's matches show the plumbing,
    not real identities."""
    from curation.__main__ import main as curation_main

    return curation_main(["identities", "s3://cinema/dataset", "--job", str(ROOT / "jobs" / "demo_curation.yaml"),
                          "--set", f"storage.endpoint_url={endpoint}"])


def train(endpoint: str) -> None:
    """The paper's recipe: the AlignerNet pre-trained on the captions, then the cinema stage starting from it."""
    aligner_dir, run_dir = OUT / "aligner", OUT / "train"
    for d in (aligner_dir, run_dir):
        shutil.rmtree(d, ignore_errors=True)  # fresh runs: the demo's checkpoints would otherwise resume

    def torchrun(out_dir: Path, *sets: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "training", str(ROOT / "jobs" / "train_demo.yaml")]
        for s in (f"data.storage.endpoint_url={endpoint}", f"out_dir={out_dir}", f"model.checkpoints={CINEMA_TINY}",
                  *sets):
            cmd += ["--set", s]
        subprocess.run(cmd, cwd=ROOT, check=True)

    torchrun(aligner_dir, "stage=aligner", "steps=10", "model.overrides=[]")
    torchrun(run_dir, f"model.overrides=[aligner.pretrained={aligner_dir / 'trained.safetensors'}]")


def subject_crops(storage, count: int = 2) -> tuple[dict, list[Path]]:
    """The manifest row and ``count`` subject crops of the first clip in the dataset that has that many subjects."""
    from common import contract as C

    rows = C.read_manifest(storage, "s3://cinema/dataset").to_pylist()
    clip = next((r for r in rows if len(r["subjects"]) >= count), None)
    if clip is None:
        raise SystemExit(f"no clip in the dataset has {count} subjects")
    from common.shard_reader import iter_samples

    crops = [OUT / f"subject_{k}.png" for k in range(count)]
    with storage.open(f"s3://cinema/dataset/shards/{clip['shard']}.tar") as f:
        sample = next(s for s, _, _ in iter_samples(f, 0, 0, 0) if s.key == clip["clip_id"])
    for k, crop in enumerate(crops):
        crop.write_bytes(sample.members[C.subject_member(k)])
    return clip, crops


def generate(prompt: str, crops: list[Path]) -> None:
    from cinema_model.__main__ import main as cinema_main

    cinema_main(["generate", "--preset", "tiny", "--checkpoints", str(CINEMA_TINY),
                 "--weights", str(OUT / "train" / "trained.safetensors"), "--prompt", prompt,
                 *[a for c in crops for a in ("--subject", str(c))], "--out", str(OUT / "video.mp4")])


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    step("1/4 building the tiny models (offline)")
    paths = build_tiny_models()
    with loopback_s3("demo") as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="cinema")
        step(f"2/4 curating {VIDEOS} into s3://cinema/dataset on {endpoint}")
        rc = curate(endpoint, paths) or dedup(endpoint) or identities(endpoint)
        if rc:
            return rc
        from common.storage import Storage, StorageConfig

        storage = Storage(StorageConfig(endpoint_url=endpoint))
        # The bucket disappears with the server: keep a local copy of the dataset (a few MB) to look at.
        shutil.rmtree(DATASET, ignore_errors=True)
        fs, path = storage.fs("s3://cinema/dataset")
        fs.get(path + "/", str(DATASET), recursive=True)
        step("3/4 training the tiny CINEMA model: 2 FSDP2 ranks streaming the shards from the bucket, AlignerNet "
         "first, then AlignerNet + DiT")
        train(endpoint)
        clip, crops = subject_crops(storage)
    step(f"4/4 generating a video for {clip['caption']!r} with two subject crops from the dataset")
    generate(clip["caption"], crops)
    print("\ndone:")
    print(f"  curated dataset:        {DATASET}  (a copy of s3://cinema/dataset)")
    print(f"  curation report:        {DATASET / 'report.html'}")
    print(f"  near duplicates:        {DATASET / 'dedup' / 'report.html'}")
    print(f"  clips contact sheet:    {DATASET / 'contact_sheet.png'}")
    print(f"  loss curve:             {OUT / 'train' / 'loss_curve.png'}")
    print(f"  validation samples:     {OUT / 'train' / 'validation'}  (a held-out clip's caption and subjects)")
    print(f"  trained weights:        {OUT / 'train' / 'trained.safetensors'}")
    print(f"  generated video:        {OUT / 'video.mp4'} (a tiny model trained for seconds: expect noise)")
    print(f"  generation sheet:       {OUT / 'video.png'}  (subjects left, frames right)")
    dataset, py = DATASET.relative_to(ROOT), ".venv/bin/python"
    print("\nlook at it:")
    print(f"  {py} -m curation stats {dataset}")
    print(f"  {py} -m curation validate {dataset}")
    print(f"  {py} -m curation show {dataset} {clip['clip_id']} --out {OUT.relative_to(ROOT) / 'clip.png'}")
    print(f"  .venv/bin/tensorboard --logdir {(OUT / 'train' / 'tensorboard').relative_to(ROOT)}")
    print(f"  chromium {dataset / 'report.html'}   (or any browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
