"""Sources with more than one video stream: the stream a player shows is read, the same one by every reader of the
source, and the manifest says which one it was, of how many."""

import io

import av
import numpy as np
import pytest
from av.stream import Disposition

from common import contract as C
from common.storage import Storage

from curation.video.decode import VideoError, open_source, open_video

from .pipeline_helpers import run_cpu_stages

THUMB = (1, (32, 32), 0)  # a thumbnail: one frame
VIDEO = (40, (64, 48), 0)  # the video: 4 s at 10 fps
SHORT_DEFAULT = (20, (48, 32), Disposition.default)  # 2 s, marked as the one to show
COVER = (1, (32, 32), Disposition.attached_pic)  # cover art


def moving(i: int, w: int, h: int) -> np.ndarray:
    """A diagonal ramp that moves 3 px a frame: contrast and motion for the filters, no cut for the detectors."""
    ramp = (np.arange(w)[None, :] * 4 + np.arange(h)[:, None] * 2 + i * 3) % 256
    return np.repeat(ramp[..., None], 3, axis=2).astype(np.uint8)


def write_streams(path, streams, fmt="mp4", audio=False):
    """One file holding the video streams ``streams`` ((frames, (width, height), disposition) each) in that order;
    attached pictures as MJPEG, the others MPEG-4 at 10 fps; with ``audio``, an AAC track as well."""
    with av.open(str(path), "w", format=fmt) as out:
        added = []
        for frames, (w, h), disposition in streams:
            picture = bool(disposition & Disposition.attached_pic)
            s = out.add_stream("mjpeg" if picture else "mpeg4", rate=10)
            s.width, s.height, s.pix_fmt, s.disposition = w, h, "yuvj420p" if picture else "yuv420p", disposition
            added.append((s, frames))
        if audio:
            sound = out.add_stream("aac", rate=8000)
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 8000, 0
            out.mux(sound.encode(samples))
            out.mux(sound.encode(None))
        for s, frames in added:
            for i in range(frames):
                frame = av.VideoFrame.from_ndarray(moving(i, s.width, s.height), format="rgb24")
                frame = frame.reformat(format=s.pix_fmt)
                frame.pts = i
                out.mux(s.encode(frame))
            out.mux(s.encode(None))
    return path


@pytest.mark.parametrize("fmt, streams, chosen, candidates", [
    ("mp4", [THUMB, VIDEO], 1, 2),  # the muxer marks the thumbnail default: a still never beats a moving stream
    ("matroska", [THUMB, VIDEO], 1, 2),  # no frame counts in Matroska: the longer by its DURATION tag
    ("mp4", [VIDEO, SHORT_DEFAULT], 1, 2),  # marked default, though shorter
    ("matroska", [VIDEO, SHORT_DEFAULT], 1, 2),
    ("mp4", [VIDEO, THUMB], 0, 2),
    ("mp4", [VIDEO, COVER], 0, 1),  # cover art is no candidate (FFmpeg gives it the longest duration)
])
def test_the_stream_a_player_shows_is_read(tmp_path, fmt, streams, chosen, candidates):
    path = str(write_streams(tmp_path / f"v.{'mkv' if fmt == 'matroska' else 'mp4'}", streams, fmt))
    with open_source(path, Storage()) as source:  # what the scene pass reads
        info = source.info
    w, h = streams[chosen][1]
    assert (info.stream_index, info.video_streams, info.width, info.height) == (chosen, candidates, w, h)
    with open_video(path, Storage()) as (_, stream, _):  # what the cutter reads
        assert stream.index == chosen


def test_cover_art_alone_is_no_video(tmp_path):
    path = write_streams(tmp_path / "song.mp4", [COVER], audio=True)
    with pytest.raises(VideoError, match="no video stream .only an attached picture"), open_source(str(path), Storage()):
        pass


@pytest.mark.parametrize("hold_mb", ["1024", "0"])  # clips from the scene pass's frames, and cut in a second decode
def test_a_thumbnail_before_the_video_does_not_hide_it(tmp_path, hold_mb):
    path = write_streams(tmp_path / "thumb_first.mp4", [THUMB, VIDEO])
    rows = run_cpu_stages(path, "scenes.detectors=[{kind: adaptive}]", "encode.preset=ultrafast",
                          f"encode.hold_mb={hold_mb}")
    assert not [r.meta for r in rows if r.kind == "error"]
    clips = [r for r in rows if r.kind == "clip"]
    assert clips and all(r.mp4 for r in clips)
    for r in clips:
        row = C.manifest_row(r.meta, "part-0")
        assert (row["width"], row["height"], row["stream_index"], row["video_streams"]) == (64, 48, 1, 2)
        with av.open(io.BytesIO(r.mp4)) as c:
            assert sum(1 for _ in c.decode(video=0)) == row["num_frames"] >= 10
    summary = [r.meta for r in rows if r.kind == "summary"]
    assert [(s["stream_index"], s["video_streams"]) for s in summary] == [(1, 2)]
