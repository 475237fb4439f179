"""The pipeline's own contract: the row type, a stage's life in a chain, how stages map onto workers, the member
names a shard may hold."""

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from common import contract as C
from common.shard_reader import iter_samples
from curation.config import load_job
from curation.pipeline.row import Row, from_table, to_table
from curation.pipeline.stage import Stage
from curation.run.executor import Chain
from curation.run.runner import chain_resources, chains
from curation.stages import pipeline
from curation.stages.scenes import WORKER_MB

ROOT = Path(__file__).resolve().parents[1]


def test_every_row_field_survives_the_arrow_trip_between_workers():
    rows = [Row("clip", "s3://b/a.mp4", {"clip_id": "x", "subjects": [{"label": "cat"}]}, mp4=b"\x00mp4",
                frames=[b"j1", b"j2"], pngs=[b"p"]),
            Row("summary", "s3://b/a.mp4", {"num_clips": 1})]
    assert from_table(to_table(rows)) == rows
    with pytest.raises(ValueError, match="unknown row kind 'clips'"):
        Row("clips", "a", {})


class Recording(Stage):
    name = "recording"
    log: list = []

    def setup(self):
        self.log.append("setup")

    def process(self, row):
        self.log.append(f"clip {row.meta['i']}")
        return [row]

    def end_source(self, uri):
        self.log.append(f"end {uri}")

    def teardown(self):
        self.log.append("teardown")


def test_a_stage_is_set_up_once_told_when_each_source_ends_and_torn_down():
    Recording.log = []
    rows = [Row("clip", "a", {"i": 0}), Row("clip", "a", {"i": 1}), Row("summary", "a", {}),
            Row("clip", "b", {"i": 2}), Row("summary", "b", {})]
    with Chain(load_job(None, input="x", output="y"), [Recording]) as chain:
        assert [r.kind for r in chain(rows)] == [r.kind for r in rows]
    assert Recording.log == ["setup", "clip 0", "clip 1", "end a", "clip 2", "end b", "teardown"]


def test_workers_are_sized_from_the_config_without_building_a_stage():
    cfg = load_job(None, ["caption.num_gpus=1", "aesthetic.num_gpus=1", "subjects.num_gpus=0.5", "encode.hold_mb=256"],
                   input="x", output="y")
    groups = chains(pipeline(cfg), cfg)
    assert [[s.name for s in g] for g in groups] == [
        ["scenes", "encode", "text", "caption_prep"], ["aesthetic", "caption"], ["subjects"]]
    cpu, gpu, half = (chain_resources(g, cfg) for g in groups)
    assert (cpu.gpus, cpu.memory_mb) == (0, WORKER_MB + 256)  # its own, then the frames it may hold
    assert (gpu.gpus, half.gpus) == (1, 0.5)
    assert [g[0].batch_size(cfg) for g in groups] == [1, cfg.aesthetic.batch_size, cfg.subjects.batch_size]


def test_a_cpu_worker_imports_no_model_library():
    """What a CPU chain's worker imports to run its first source (the runner's task and the stages package): a
    model library there is seconds of every worker's start, and memory it holds for nothing."""
    code = ("import sys, curation.run.runner, curation.stages; "
            "print(sorted({'torch', 'scipy.optimize', 'transformers', 'ultralytics', 'vllm'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_only_the_contracts_member_names_are_fields_and_a_repeated_member_is_rejected():
    assert C.is_field("subject_5.png") and not C.is_field(f"subject_{C.MAX_SUBJECTS}.png")
    assert not C.is_field("pth") and C.is_field(C.CAPTION)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("k.mp4", b"first"), ("k.mp4", b"second"), ("k.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rejected = []
    buf.seek(0)
    (sample, _, _), = iter_samples(buf, 0, 0, 0, reject=lambda name, why: rejected.append((name, why)))
    assert sample.members == {"mp4": b"first", "json": b"{}"} and rejected == [("k.mp4", "appears twice")]
