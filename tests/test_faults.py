"""Faults a user or the environment causes: each is injected on purpose, and nothing may be lost or poisoned."""

import errno
import hashlib
import io
import json
import os
import random
import subprocess
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from common import contract as C
from common.lease import Lease, LeaseHeld
from common.storage import Storage, StorageUnavailable
from common.typed_config import ConfigError
from curation.__main__ import main
from curation.config import ShardsConfig, load_job
from curation.pipeline.faults import JobStopped, fault_of
from curation.pipeline.row import Row
from curation.pipeline.stage import error_row
from curation.run.preflight import check_job
from curation.sink.shards import ShardSink
from curation.sink.writer import DatasetWriter
from curation.stages import SceneStage
from curation.video.analysis import analyse
from curation.video.decode import VideoError, open_source, open_video

from .conftest import VIDEOS
from .pipeline_helpers import check_contract, run_cpu_stages, send

ST = Storage()


def job(tmp_path, *overrides):
    return load_job(None, ["caption.enabled=false", "aesthetic.enabled=false", *overrides],
                    input=str(VIDEOS / "counter.mp4"), output=str(tmp_path / "out"))


def write_video(path, frames_pts, size=(64, 48), time_base=Fraction(1, 1000), rate=25, fmt=None):
    """A video declaring ``rate`` whose frame k has timestamp frames_pts[k] (in ``time_base``), with moving content."""
    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = *size, "yuv420p"
        s.codec_context.time_base = time_base
        s.options = {"preset": "ultrafast"}
        for k, pts in enumerate(frames_pts):
            ramp = (np.arange(size[0]) * 4 + 2 * k) % 200 + 30  # a pattern drifting by 2 levels a frame: no cut
            img = np.repeat(np.stack([ramp, ramp[::-1], np.full_like(ramp, 90)], -1)[None], size[1], 0).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            out.mux(s.encode(frame))
        out.mux(s.encode(None))


def clips(rows):
    return [r for r in rows if r.kind == "clip"]


def mp4_seconds(mp4: bytes) -> float:
    """How long a clip plays: last frame's time plus one frame step."""
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        pts = [f.pts for f in c.decode(s)]
    step = pts[-1] - pts[-2]
    return float((pts[-1] - pts[0] + step) * s.time_base)


# -- config and preflight: mistakes stop before anything runs ------------------------------------------------
@pytest.mark.parametrize("setting, field", [
    ("ray.num_cpus=0", "ray.num_cpus"), ("encode.max_short_side=-10", "encode.max_short_side"), ("limit=-1", "limit"),
    ("max_source_pixels=-1", "max_source_pixels"), ("ray.progress_interval_s=0", "ray.progress_interval_s"),
    ("filters.max_damaged_frames=-1", "filters.max_damaged_frames"),
    # Not a number, or not a finite one: NaN passed every range check, and each source then failed in a worker.
    ("encode.hold_mb=.nan", "encode.hold_mb: expected a finite number"),
    ("scenes.min_scene_s=.nan", "scenes.min_scene_s"),
    ("scenes.min_scene_s=-1", "min_scene_s >= 0"), ("shards.target_size_mb=.inf", "shards.target_size_mb"),
    ("shards.target_size_mb=.nan", "shards.target_size_mb"), ("filters.min_motion=.nan", "filters.min_motion"),
    ("filters.min_motion=-1", "min_motion must be >= 0"), ("subjects.box_threshold=.nan", "subjects.box_threshold"),
    ("caption.num_gpus=-1", "caption.num_gpus"), ("scenes.trim.fade_ratio=nan", "scenes.trim.fade_ratio"),
    ("encode.crf=true", "encode.crf: expected int, got True"), ("encode.fps='fast'", "encode.fps"),
    ("subjects.track_frames=0", "subjects.track_frames"), ("subjects.references=5", "subjects.references"),
    ("subjects.max_border_cut=2", "subjects.max_border_cut"), ("identities.similarity=0", "identities.similarity"),
])
def test_values_that_cannot_work_are_one_config_error_naming_the_field(tmp_path, setting, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        job(tmp_path, setting)


def test_a_job_file_that_is_not_utf8_is_a_config_error(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_bytes(b"input: \xff\xfe\n")
    with pytest.raises(ConfigError, match="job.yaml: not a UTF-8 text file"):
        load_job(str(bad))


@pytest.mark.parametrize("setting, message", [
    ("encode.preset=warpspeed", "encode: cannot encode with codec='libx264' preset='warpspeed'"),
    ("encode.codec=nocodec", "encode: cannot encode with codec='nocodec'"),
    ("scenes.detectors=[{kind: adaptive, args: {bogus: 1}}]",
     r"scenes.detectors\[0\].args.bogus: adaptive takes no such"),
    # Before: accepted, then every source failed in scenes and was marked done "error": the fixed rerun did nothing.
    ("scenes.detectors=[{kind: adaptive, args: {adaptive_threshold: high}}]",
     r"scenes.detectors\[0\].args.adaptive_threshold: expected float, got 'high'"),
    ("scenes.detectors=[{kind: threshold, args: {threshold: true}}]", r"args.threshold: expected float, got True"),
    ("scenes.detectors=[{kind: adaptive, args: {window_width: 2.5}}]", r"args.window_width: expected int, got 2.5"),
    ("scenes.detectors=[{kind: content, args: {weights: 1}}]", r"args.weights: content's weights cannot be set"),
    ("scenes.detectors=[{kind: transnetv2, args: {threshold: true}}]", r"args.threshold: expected float, got True"),
    ("scenes.detectors=[{kind: transnetv2, args: {weights: /nope.pth}}]", r"scenes.detectors\[0\].args.weights: no such file"),
    ("scenes.detectors=[{kind: transnetv2, args: {gate: sometimes}}]", r"args.gate: expected bool, got 'sometimes'"),
    ("scenes.detectors=[{kind: transnetv2, args: {runtime: tensorrt}}]", r"args.runtime: openvino or torch, not 'tensorrt'"),
    ("aesthetic.enabled=true", "aesthetic.clip_model: 'openai/clip-vit-large-patch14' is neither a local folder"),
])
def test_run_time_mistakes_stop_before_ray_and_mark_nothing(tmp_path, capsys, setting, message):
    # Before: every clip failed in the workers and each source was marked done "ok" with 0 clips, so the fixed
    # rerun (even with retry_errors=true) did nothing.
    with pytest.raises(ConfigError, match=message):
        check_job(job(tmp_path, setting))
    code = main(["run", "--input", str(VIDEOS / "counter.mp4"), "--output", str(tmp_path / "out"),
                 "--set", "caption.enabled=false", "--set", "aesthetic.enabled=false", "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("config error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


# -- inputs ---------------------------------------------------------------------------------------------------
def test_existing_paths_with_glob_characters_are_paths(tmp_path):
    odd = tmp_path / "takes [1]"
    odd.mkdir()
    (odd / "a[1].mp4").write_bytes(b"x")
    (odd / "b?.mp4").write_bytes(b"x")
    assert ST.list_videos(str(odd / "a[1].mp4"), [".mp4"]) == [str(odd / "a[1].mp4")]
    assert ST.list_videos(str(odd), [".mp4"]) == [str(odd / "a[1].mp4"), str(odd / "b?.mp4")]
    assert ST.list_videos(str(tmp_path / "*" / "*.mp4"), [".mp4"]) == [str(odd / "a[1].mp4"), str(odd / "b?.mp4")]


def test_input_lists_that_cannot_be_read_are_one_clear_message(tmp_path, capsys):
    latin1 = tmp_path / "list.txt"
    latin1.write_bytes("/videos/caf\xe9.mp4\n".encode("latin-1"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(latin1, "is not UTF-8 text"), (tmp_path / "missing.txt", "does not exist"),
             (tmp_path / "nothing_here", "does not exist"), (empty, "lists no video")]
    for uri, message in cases:
        assert main(["run", "--input", str(uri), "--output", str(tmp_path / "out"), "--set", "caption.enabled=false",
                     "--set", "aesthetic.enabled=false"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("config error: input: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_input_lists_read_as_people_write_them(tmp_path, caplog):
    # Before: the BOM made the first path "\ufeff/videos/a.mp4", the indented comment was a source, the file:// URI
    # stayed percent-encoded (three source errors), and a source listed twice was counted twice in the summary.
    spaced = tmp_path / "my takes" / "b c.mp4"
    listed = tmp_path / "list.txt"
    listed.write_text(f"\ufeff{tmp_path}/a.mp4\r\n   # an indented comment\n\t\n{spaced.as_uri()}\n"
                      f"{tmp_path}/a.mp4\nfile://otherhost/x.mp4\n", encoding="utf-8")
    assert "%20" in spaced.as_uri()
    assert ST.list_videos(str(listed), [".mp4"]) == [f"{tmp_path}/a.mp4", str(spaced), "file://otherhost/x.mp4"]
    assert "names 1 source(s) more than once" in caplog.text
    with pytest.raises(FileNotFoundError, match=f"{spaced} does not exist"):  # decoded as --input too
        ST.list_videos(spaced.as_uri(), [".mp4"])
    spaced.parent.mkdir()
    spaced.write_bytes(b"x")
    assert ST.list_videos(spaced.as_uri(), [".mp4"]) == [str(spaced)]


def test_fifos_devices_and_refused_connections_are_not_reported_missing(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    (tmp_path / "random.mp4").symlink_to("/dev/urandom")
    for path in (fifo, tmp_path / "random.mp4"):
        with pytest.raises(VideoError, match="not a regular file"), open_video(str(path), ST):
            pass
    # Before: "file not found". A host refusing the connection is the network's fault: the source is retried.
    with pytest.raises(StorageUnavailable, match="Connect call failed") as e, open_video("http://127.0.0.1:9/v.mp4", Storage(retries=1)):
        pass
    assert fault_of(e.value) == "environment"


def test_an_unreachable_object_store_is_one_storage_error(monkeypatch):
    from common.storage import StorageConfig

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    down = Storage(StorageConfig(endpoint_url="http://127.0.0.1:9"), retries=0)
    with pytest.raises(StorageUnavailable, match="s3://bucket/videos: storage error after 1 attempts: Could not connect"):
        down.list_videos("s3://bucket/videos", [".mp4"])  # before: botocore's traceback, and no retry


def test_a_frame_rate_near_zero_is_refused_when_the_source_is_opened(tmp_path):
    path = tmp_path / "slow.mkv"
    write_video(path, range(3), time_base=Fraction(10**6), rate=Fraction(1, 10**6))  # one frame per 11.6 days
    with pytest.raises(VideoError, match="frame rate .* is outside 0.1..1000"), open_source(str(path), ST):
        pass


# -- wrong data, silently: timing, damage, size -----------------------------------------------------------------
def test_variable_frame_rate_clips_play_as_long_as_their_frames_did(tmp_path):
    # Frames 40 ms apart, then 100 ms apart: the container declares an average rate that fits neither half.
    pts = [40 * k for k in range(50)] + [2000 + 100 * k for k in range(40)]
    path = tmp_path / "vfr.mkv"
    write_video(path, pts)
    rows = run_cpu_stages(path, "scenes.detectors=[{kind: adaptive}]", "scenes.max_clip_s=30",
                          "scenes.trim.fade_ratio=0", "filters.max_blank_frac=1")
    (clip,) = clips(rows)
    source_s = (pts[-1] + 100) / 1000
    # Before: 90 frames at the declared rate, 3.6 s for a source that plays 6 s.
    assert clip.meta["end_s"] - clip.meta["start_s"] == pytest.approx(source_s, abs=0.05)
    assert mp4_seconds(clip.mp4) == pytest.approx(source_s, abs=0.05)


def test_a_timestamp_jump_is_a_break_and_adds_no_time(tmp_path):
    pts = [40 * k for k in range(75)] + [10**9 + 40 * k for k in range(75)]  # a leap of 1e6 s after 3 s
    path = tmp_path / "jump.mkv"
    write_video(path, pts)
    rows = run_cpu_stages(path, "scenes.detectors=[{kind: adaptive}]", "scenes.max_clip_s=30",
                          "scenes.trim.fade_ratio=0", "filters.max_blank_frac=1")
    (summary,) = [r.meta for r in rows if r.kind == "summary"]
    assert summary["duration_s"] < 7  # before: 1,000,003 s
    spans = [(c.meta["start_frame"], c.meta["end_frame"]) for c in clips(rows)]
    assert spans and all(e <= 75 or s >= 75 for s, e in spans), spans
    assert all(c.meta["end_s"] - c.meta["start_s"] < 3.1 for c in clips(rows))


def test_damaged_frames_are_counted_and_dropped_by_config(tmp_path):
    data = bytearray((VIDEOS / "testvideo.mp4").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(b ^ 0xFF for b in data[mid : mid + 4096])
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    with open_source(str(path), ST) as source:
        a = analyse(source, [], 64)
    damaged = np.flatnonzero(a.scores.damaged)
    assert len(damaged) >= 1 and a.num_frames == source.info.num_frames  # the damage loses no frame
    # testvideo.mp4 carries a burned-in copyright line: the scene pass's text check would drop every clip.
    common = ["scenes.detectors=[{kind: adaptive}]", "scenes.trim.fade_ratio=0", "filters.max_blank_frac=1",
              "filters.max_text_area=null"]
    flagged = run_cpu_stages(path, *common, "filters.max_damaged_frames=null")
    hit = [r.meta for r in clips(flagged) if r.meta["start_frame"] <= damaged[0] < r.meta["end_frame"]]
    assert hit and hit[0]["damaged_frames"] >= 1  # before: kept with no trace of the damage
    dropped = run_cpu_stages(path, *common)
    assert [r.meta["clip_id"] for r in dropped if r.kind == "dropped" and r.meta["dropped_by"] == "damaged"] == [hit[0]["clip_id"]]


def test_a_stream_that_grows_past_max_source_pixels_midway_is_refused(tmp_path):
    # Two H.264 streams back to back in one elementary stream: 64x48 (what the header says), then 640x480.
    path = tmp_path / "grows.h264"
    write_video(tmp_path / "a.h264", range(10), size=(64, 48), fmt="h264")
    write_video(tmp_path / "b.h264", range(10), size=(640, 480), fmt="h264")
    path.write_bytes((tmp_path / "a.h264").read_bytes() + (tmp_path / "b.h264").read_bytes())
    with open_source(str(path), ST, max_pixels=10_000) as source:
        assert source.info.width == 64
        with pytest.raises(VideoError, match=r"frame 10 is 640x480, above the limit of 10000 pixels"):
            analyse(source, [], 64)


def test_a_damaged_tail_keeps_the_frames_before_it_and_the_whole_files_sha1(tmp_path):
    path = tmp_path / "tail.mkv"
    write_video(path, [40 * k for k in range(100)], fmt="matroska")
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3 :] = random.Random(0).randbytes(len(data) - len(data) * 2 // 3)
    path.write_bytes(bytes(data))
    rows = run_cpu_stages(path, "scenes.detectors=[{kind: adaptive}]", "scenes.max_clip_s=30")
    (summary,) = [r.meta for r in rows if r.kind == "summary"]
    assert not [r for r in rows if r.kind == "error"] and 0 < summary["num_frames"] < 100
    # Hashed to the end, past where the decoder gave up, each byte read once.
    assert summary["source_sha1"] == hashlib.sha1(data).hexdigest()
    assert summary["source_bytes"] == summary["bytes_read"] == len(data)


# -- whose fault: the source's, or the environment's ---------------------------------------------------------------
class FailsAfter(io.FileIO):
    """A source file whose reads fail once ``limit`` bytes have come through it, with ``error``."""

    def __init__(self, path, limit, error):
        super().__init__(path)
        self.left, self.error = limit, error

    def read(self, n=-1):
        if n > self.left:
            raise self.error
        self.left -= n
        return super().read(n)


@pytest.mark.parametrize("error, fault", [
    (StorageUnavailable("s3://raw/testvideo.mp4: storage error after 4 attempts: Read timeout"), "environment"),
    (OSError(errno.ECONNRESET, "Connection reset by peer"), "environment"),
    (OSError(errno.ENOSPC, "No space left on device"), "stop"),
    (OSError("the object ended before its size"), "source"),
])
def test_a_source_whose_read_fails_midway_is_one_error_row_of_that_fault(tmp_path, monkeypatch, error, fault):
    # Halfway through the scene pass, which reads the source once: the SHA-1 is made of the same reads.
    monkeypatch.setattr(Storage, "open", lambda self, uri, mode="rb": FailsAfter(uri, 1_000_000, error))
    rows = run_cpu_stages(VIDEOS / "testvideo.mp4", "scenes.detectors=[{kind: adaptive}]")
    (row,) = rows
    assert row.kind == "error" and row.meta["stage"] == "scenes" and row.meta["fault"] == fault
    assert row.meta["clip_id"] is None and str(error) in row.meta["message"]
    writer = DatasetWriter(str(tmp_path / "out"), ST, ShardsConfig())
    writer.recover()
    if fault == "stop":
        with pytest.raises(JobStopped, match="No space left on device"):
            writer.add(row)
    else:
        writer.add(row)
    writer.close()
    # The source's own fault marks it done; the environment's leaves it to the rerun, as any such failure does.
    done = {uri: m["status"] for uri, m in markers(tmp_path / "out").items()}
    assert done == ({str(VIDEOS / "testvideo.mp4"): "error"} if fault == "source" else {})
    assert bool(writer.stats.environment) == (fault != "source")


def enospc_in_temp(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/tmp/tmpspill")


def test_a_full_temporary_folder_stops_the_job_and_marks_no_source(tmp_path, monkeypatch):
    # Before: the good source was marked done "error" for good.
    cfg = job(tmp_path, "scenes.detectors=[{kind: adaptive}]")
    monkeypatch.setattr("curation.video.one_pass.tempfile.TemporaryFile", enospc_in_temp)
    stage = SceneStage(cfg)
    stage.setup()
    (row,) = stage([Row("source", str(VIDEOS / "counter.mp4"), {})])
    assert row.kind == "error" and row.meta["fault"] == "stop"
    writer = DatasetWriter(str(tmp_path / "out"), ST, ShardsConfig())
    writer.recover()
    with pytest.raises(JobStopped, match="scenes on .*counter.mp4: OSError: .*No space left on device"):
        writer.add(row)
    writer.close()
    assert writer.done == {} and not (tmp_path / "out" / C.DONE_DIR).exists()


def test_faults_are_told_apart():
    assert fault_of(VideoError("the file has no video stream")) == "source"
    assert fault_of(PermissionError(errno.EACCES, "Permission denied")) == "environment"
    assert fault_of(StorageUnavailable("s3://b/k: storage error after 4 attempts")) == "environment"
    try:  # an environment error under a message written for the source still counts as the environment's
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError:
            raise VideoError("not a readable video container") from None
    except VideoError as e:
        assert fault_of(e) == "stop"


def row(kind, uri, **meta):
    return Row(kind, uri, {"source_uri": uri, **meta}, b"mp4" if kind == "clip" else None)


def clip_meta(clip_id, sha1="s" * 40):
    return {"clip_id": clip_id, "source_sha1": sha1, "start_s": 0.0, "end_s": 1.0, "motion": 1.0, "start_frame": 0,
            "end_frame": 8}


def markers(out) -> dict:
    return {m["uri"]: m for m in C.read_done_markers(ST, str(out))}


def test_environment_faults_leave_the_source_to_the_rerun_and_clip_failures_are_not_ok(tmp_path):
    out = tmp_path / "out"
    writer = DatasetWriter(str(out), ST, ShardsConfig())
    writer.recover()
    refused = error_row(row("source", "http://h/a.mp4"), "scenes", StorageUnavailable("http://h/a.mp4: refused"))
    send(writer, [refused, *(row("clip", "b.mp4", **clip_meta(clip_id)) for clip_id in ("c1", "c2")),
                  error_row(row("clip", "b.mp4", clip_id="c3"), "encode", ValueError("odd frame")),
                  row("summary", "b.mp4", num_clips=3, duration_s=3.0, source_sha1="s" * 40)])
    writer.close()
    done = markers(out)
    assert "http://h/a.mp4" not in done and writer.stats.environment  # before: marked "error" for good
    assert done["b.mp4"]["status"] == "error"  # before: "ok", so retry_errors=true never retried c3


def test_a_setting_that_fails_every_source_the_same_way_marks_none_done(tmp_path):
    # Before: each source was marked done "error", so the rerun after the fix said "nothing to do".
    assert fault_of(TypeError("'>=' not supported between instances of 'float' and 'str'")) == "job"
    out = tmp_path / "out"
    writer = DatasetWriter(str(out), ST, ShardsConfig())
    writer.recover()
    with pytest.raises(JobStopped, match=r"the first 3 sources to fail all failed in scenes the same way .*"
                                         r"ValueError: cannot convert float NaN to integer\).*job's fault"):
        for uri in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
            send(writer, [error_row(row("source", uri), "scenes", ValueError("cannot convert float NaN to integer"))])
    writer.close()
    assert markers(out) == {} and C.read_errors(ST, str(out)).num_rows == 0
    # A TypeError (a string where a number belongs) is the job's fault on its own: never marked, left for the rerun.
    writer = DatasetWriter(str(out), ST, ShardsConfig())
    writer.recover()
    send(writer, [error_row(row("source", "a.mp4"), "scenes", TypeError("'<' not supported"))])
    writer.close()
    assert markers(out) == {} and writer.stats.job_faults == ["scenes on a.mp4: TypeError: '<' not supported"]


def test_sources_failing_their_own_ways_are_marked_done(tmp_path):
    out = tmp_path / "out"
    writer = DatasetWriter(str(out), ST, ShardsConfig())
    writer.recover()
    # The decoder's own errors are a source's, however many share them; unexplained ones that differ, or that
    # follow a source that completed, are the sources' as well.
    for uri in ("z1.mp4", "z2.mp4", "z3.mp4"):
        send(writer, [error_row(row("source", uri), "scenes", VideoError("not a readable video container"))])
    for uri, message in (("a.mp4", "odd frame 3"), ("b.mp4", "odd frame 7")):
        send(writer, [error_row(row("source", uri), "scenes", ValueError(message))])
    assert set(markers(out)) == {"z1.mp4", "z2.mp4", "z3.mp4"}  # a.mp4 and b.mp4 wait: the run proved nothing yet
    send(writer, [row("dropped", "ok.mp4", clip_id="c1", motion=0.0, dropped_by="motion"),
                  row("summary", "ok.mp4", num_clips=1, duration_s=1.0, source_sha1="s" * 40)])
    assert {"a.mp4", "b.mp4", "ok.mp4"} <= set(markers(out))  # a source kept or dropped a clip: the job works
    send(writer, [error_row(row("source", "c.mp4"), "scenes", ValueError("odd frame 3"))])
    assert "c.mp4" in markers(out)
    writer.close()
    assert {u: m["status"] for u, m in markers(out).items()} == {
        "z1.mp4": "error", "z2.mp4": "error", "z3.mp4": "error", "a.mp4": "error", "b.mp4": "error", "ok.mp4": "ok",
        "c.mp4": "error"}
    assert C.read_errors(ST, str(out)).num_rows == 6
    # Too few to tell (a job of two sources): their own.
    out2 = tmp_path / "out2"
    writer = DatasetWriter(str(out2), ST, ShardsConfig())
    writer.recover()
    for uri in ("a.mp4", "b.mp4"):
        send(writer, [error_row(row("source", uri), "scenes", ValueError("odd frame"))])
    writer.close()
    assert set(markers(out2)) == {"a.mp4", "b.mp4"}


def test_the_done_marker_says_which_of_several_video_streams_was_read(tmp_path):
    out = tmp_path / "out"
    writer = DatasetWriter(str(out), ST, ShardsConfig())
    writer.recover()
    send(writer, [row("summary", "two.mp4", num_clips=0, duration_s=1.0, source_sha1="t" * 40, stream_index=1,
                      video_streams=2),
                  row("summary", "one.mp4", num_clips=0, duration_s=1.0, source_sha1="o" * 40, stream_index=0,
                      video_streams=1)])
    writer.close()
    done = markers(out)
    assert (done["two.mp4"]["stream_index"], done["two.mp4"]["video_streams"]) == (1, 2)
    assert "video_streams" not in done["one.mp4"]


def test_byte_identical_copies_settle_in_one_run(tmp_path):
    out = tmp_path / "out"
    writer = DatasetWriter(str(out), ST, ShardsConfig())
    writer.recover()
    for uri in ("a.mp4", "copy-of-a.mp4", "another-copy.mp4"):  # interleaved, as parallel workers send them
        send(writer, [row("clip", uri, **clip_meta("c1"))])
    for uri in ("a.mp4", "copy-of-a.mp4", "another-copy.mp4"):
        send(writer, [row("clip", uri, **clip_meta("c2")),
                      row("summary", uri, num_clips=2, duration_s=2.0, source_sha1="s" * 40)])
    writer.close()
    done = markers(out)
    # Before: only a.mp4 settled; each copy needed a rerun of its own, decoding it again.
    assert {u: (m["status"], m.get("duplicate_of")) for u, m in done.items()} == {
        "a.mp4": ("ok", None), "copy-of-a.mp4": ("ok", "a.mp4"), "another-copy.mp4": ("ok", "a.mp4")}
    assert writer.stats.clips_written == 2 and writer.stats.sources_duplicate == 2
    assert check_contract(str(out), decode=False).keys() == {"c1", "c2"}  # each copy's staged tail merged without the copies' clips
    assert not list((out / C.STAGING_DIR).iterdir())
    # A copy found in a later run settles on the committed clips just the same.
    later = DatasetWriter(str(out), ST, ShardsConfig())
    later.recover()
    send(later, [*(row("clip", "late-copy.mp4", **clip_meta(clip_id)) for clip_id in ("c1", "c2")),
                 row("summary", "late-copy.mp4", num_clips=2, duration_s=2.0, source_sha1="s" * 40)])
    later.close()
    assert markers(out)["late-copy.mp4"]["duplicate_of"] == "a.mp4" and later.stats.clips_written == 0
    assert check_contract(str(out), decode=False).keys() == {"c1", "c2"}


def test_a_shard_with_clips_committed_elsewhere_is_rewritten_without_them(tmp_path):
    # A retried task packs new clips with ones its first attempt already sent: only the new ones are committed.
    out = tmp_path / "out"
    writer = DatasetWriter(str(out), ST, ShardsConfig(max_clips=2))
    writer.recover()
    send(writer, [row("clip", "a.mp4", **clip_meta(c)) for c in ("c1", "c2")])
    send(writer, [row("clip", "a.mp4", **clip_meta(c)) for c in ("c2", "c3")])
    send(writer, [row("clip", "a.mp4", **clip_meta(c)) for c in ("c1", "c2")])  # all committed: nothing to add
    writer.close()
    rows = check_contract(str(out), decode=False)
    assert sorted(rows) == ["c1", "c2", "c3"] and rows["c3"]["shard"] == C.shard_name([("a.mp4", "c3")])
    assert len(list((out / C.SHARDS_DIR).iterdir())) == 2  # the shard of c2 + c3 was removed once rewritten
    assert writer.stats.clips_duplicate == 3


def test_small_last_shards_are_merged_into_full_ones(tmp_path):
    out = tmp_path / "out"
    writer = DatasetWriter(str(out), ST, ShardsConfig(target_size_mb=2e-5))  # 20 bytes: about 7 clips of 3
    writer.recover()
    for k in range(10):  # ten tasks with one small clip each: each one's only shard is a staged tail
        send(writer, [row("clip", f"s{k}.mp4", **clip_meta(f"c{k}")),
                      row("summary", f"s{k}.mp4", num_clips=1, duration_s=1.0, source_sha1=f"{k}" * 40)])
        assert len(list((out / C.STAGING_DIR).iterdir())) <= 6  # merged as soon as they add up to a shard
    writer.close()
    shards = {}
    for r in check_contract(str(out), decode=False).values():
        shards[r["shard"]] = shards.get(r["shard"], 0) + 1
    assert sorted(shards.values()) == [3, 7] and not list((out / C.STAGING_DIR).iterdir())
    assert len(markers(out)) == 10


def test_recover_removes_what_a_killed_run_left_uncommitted(tmp_path):
    out = tmp_path / "out"
    writer = DatasetWriter(str(out), ST, ShardsConfig())
    writer.recover()
    send(writer, [row("clip", "a.mp4", **clip_meta("c1"))])  # a staged tail the driver never merged
    # A worker's full shard whose rows never reached the driver, and a shard cut off mid-write.
    list(ShardSink(str(out), ST, ShardsConfig(tail_fraction=0))([row("clip", "b.mp4", **clip_meta("c2"))]))
    (out / C.SHARDS_DIR / ".part-x.tar.1234abcd.tmp").write_bytes(b"half")
    assert len(list((out / C.STAGING_DIR).iterdir())) == 1 and len(list((out / C.SHARDS_DIR).iterdir())) == 2
    again = DatasetWriter(str(out), Storage(), ShardsConfig())
    again.recover()  # the driver was killed: nothing of the above was committed, so none of it stays
    assert not list((out / C.STAGING_DIR).iterdir()) and not list((out / C.SHARDS_DIR).iterdir())
    assert again.committed == set()


def test_storage_does_not_retry_what_cannot_get_better(tmp_path, monkeypatch):
    calls = []

    def full(*_a):
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        Storage()._retry("x", full)
    assert len(calls) == 1  # before: four tries and a traceback


def test_a_read_only_output_mid_run_is_the_error_the_user_reads(tmp_path, monkeypatch, capsys, ray_local):
    # The driver's writes fail as on a file system remounted read-only after the first commit. Before: Ray's
    # "core worker has already been shut down" in 3 runs of 4, and the temporary shard left behind.
    real = Storage.write_atomic
    calls = []

    def remounted(self, uri, *a, **k):
        calls.append(uri)
        if len(calls) > 3:
            raise OSError(errno.EROFS, "Read-only file system", uri)
        return real(self, uri, *a, **k)

    monkeypatch.setattr(Storage, "write_atomic", remounted)
    out = tmp_path / "out"
    code = main(["run", "--input", str(VIDEOS / "counter.mp4"), "--output", str(out), "--set", "caption.enabled=false",
                 "--set", "aesthetic.enabled=false", "--set", "scenes.detectors=[{kind: adaptive}]",
                 "--set", "shards.max_clips=1", "--set", "scenes.min_clip_s=0.5", "--set", "ray.num_cpus=1",
                 "--set", "filters.max_text_area=null",
                 "--set", "ray.progress_interval_s=0.5"])
    err = capsys.readouterr().err
    assert code == 3 and "Read-only file system" in err and "shut down" not in err, err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not Path(C.done_marker_uri(Storage(), str(out), str(VIDEOS / "counter.mp4"))).exists()


QUICK_JOB = ["--set", "caption.enabled=false", "--set", "aesthetic.enabled=false", "--set", "ray.num_cpus=1",
             "--set", "filters.max_text_area=null",  # counter.mp4 shows its frame number: keep its clip
             "--set", "scenes.detectors=[{kind: adaptive}]", "--set", "encode.preset=ultrafast"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 100 KB file system: the first shard does not fit."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_under_a_worker_writing_a_shard_is_one_line(tiny_disk, capsys, ray_local):
    # Before: exit 3, but a 64-line remote traceback in terminal colours, and the temporary shard left behind.
    out = tiny_disk / "out"
    code = main(["run", "--input", str(VIDEOS / "counter.mp4"), "--output", str(out), *QUICK_JOB])
    err = [line for line in capsys.readouterr().err.splitlines() if " WARNING " not in line]
    assert code == 3 and len(err) == 1, err
    assert f"stopped: [Errno 28] No space left on device: '{out}/" in err[0] and ".tar'" in err[0]
    assert "run the same command again" in err[0] and "\x1b[" not in err[0]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_a_report_that_could_not_be_written_is_written_by_the_rerun(tmp_path, monkeypatch, capsys, ray_local):
    # Before: a raw OSError (exit 1) after the commit, a .report.html.*.tmp left, and the rerun said "nothing to
    # do" without ever writing the report.
    real = Storage.write_atomic

    def full_at_the_report(self, uri, *a, **k):
        if uri.endswith(C.REPORT_FILE):
            return real(self, uri, write=lambda f: (f.write(b"<html>"), os_error(errno.ENOSPC)))
        return real(self, uri, *a, **k)

    monkeypatch.setattr(Storage, "write_atomic", full_at_the_report)
    out = tmp_path / "out"
    command = ["run", "--input", str(VIDEOS / "counter.mp4"), "--output", str(out), *QUICK_JOB]
    assert main(command) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the dataset is committed but its report is not" in err[0], err
    assert f"No space left on device: '{out / C.REPORT_FILE}'" in err[0] and "run the same command again" in err[0]
    assert not (out / C.REPORT_FILE).exists() and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(Storage, "write_atomic", real)
    assert main(command) == 0
    assert "nothing to do" in capsys.readouterr().out and (out / C.REPORT_FILE).exists()
    written = (out / C.REPORT_FILE).stat().st_mtime_ns
    assert main(command) == 0 and (out / C.REPORT_FILE).stat().st_mtime_ns == written  # up to date: left alone


def os_error(code: int):
    raise OSError(code, os.strerror(code))


# -- one driver per output ---------------------------------------------------------------------------------------
def test_a_second_driver_is_refused_and_a_dead_ones_lease_is_taken_over(tmp_path):
    out = str(tmp_path / "out")
    first = Lease(ST, out, settle_s=0)
    first.acquire()
    second = Lease(ST, out, settle_s=0)
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()} on .* run one driver per output"):
        second.acquire()
    # A driver killed on this host: its process is gone, so its rerun takes over at once.
    lease = json.loads((tmp_path / "out" / "lease.json").read_text())
    (tmp_path / "out" / "lease.json").write_text(json.dumps({**lease, "pid": 2**22 + 1}))
    second.acquire()
    with pytest.raises(LeaseHeld):  # the first driver, had it lived, stops at its next commit
        first.check()
    second.release()
    assert not (tmp_path / "out" / "lease.json").exists()


def test_two_drivers_starting_together_cannot_both_hold_the_output(tmp_path):
    out = str(tmp_path / "out")
    results = []

    def take():
        try:
            Lease(ST, out, settle_s=0.5).acquire()
            results.append("held")
        except LeaseHeld:
            results.append("refused")

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["held", "refused"]


def test_a_claim_is_only_held_once_confirmed(tmp_path):
    # The curation driver claims, starts Ray, then confirms: a driver that wrote in between (it read the output
    # before this claim was visible) holds the output, and this one is refused at its confirm.
    out = str(tmp_path / "out")
    first, second = Lease(ST, out, settle_s=0), Lease(ST, out, settle_s=0)
    first.claim()
    (tmp_path / "out" / "lease.json").unlink()  # what the second driver saw when it read
    second.claim()
    with pytest.raises(LeaseHeld, match="in use by another driver"):
        first.confirm()
    second.confirm()
    second.release()
    assert not (tmp_path / "out" / "lease.json").exists()
