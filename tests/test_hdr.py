"""HDR and wide-gamut sources: tone-mapped to SDR BT.709 (or dropped, by config), their colour in the manifest; SDR
sources untouched.

The sources are one SDR picture graded for each colour by BT.2408's mapping (SDR white at 203 nits), by FFmpeg's
colour management: converted back, each must look like the picture again. Left as it was decoded (the old
behaviour), PQ is off by 41 levels on average, HLG by 23, BT.2020 SDR by 11 (most on saturated colours).
"""

import functools
import hashlib
import io
import re
from fractions import Fraction
from pathlib import Path

import av
import av.filter
import numpy as np
import pytest

from common import contract as C
from common.storage import Storage

from curation.config import ShardsConfig, load_job
from curation.sink.writer import DatasetWriter
from curation.tools.report import write_report
from curation.video.colour import ColourError, sdr

from .pipeline_helpers import run_cpu_stages, send
from .test_source_streams import THUMB, VIDEO, write_streams

# BT.709 R'G'B' patches, 16 px wide: black, greys, white, red, green, blue, a skin tone
PATCHES = np.array([[0, 0, 0], [26, 26, 26], [64, 64, 64], [128, 128, 128], [191, 191, 191], [255, 255, 255],
                    [204, 26, 26], [26, 178, 26], [26, 26, 204], [217, 153, 128]], np.uint8)
W, H = 16 * len(PATCHES), 32
MEAN_TOLERANCE = 6  # levels, mean over patches and channels; the EETF dims white by ~26 (1000-nit peak to 203)

SDR = dict(transfer="bt709", primaries="bt709", matrix="bt709")
PQ = dict(transfer="smpte2084", primaries="bt2020", matrix="bt2020nc")
HLG = dict(transfer="arib-std-b67", primaries="bt2020", matrix="bt2020nc")
BT2020_SDR = dict(transfer="bt2020-10", primaries="bt2020", matrix="bt2020nc")


def picture() -> av.VideoFrame:
    rgb = np.repeat(np.repeat(PATCHES[None], 16, axis=1), H, axis=0)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame.color_primaries, frame.color_trc, frame.color_range = 1, 1, 2  # BT.709, full range
    return frame


@functools.cache
def graded(transfer: str, primaries: str, matrix: str, pix_fmt: str) -> av.VideoFrame:
    """The picture as a frame of that colour, by FFmpeg's colour management (relative colorimetric: SDR white at
    203 nits). Cached: FFmpeg builds a table per conversion, in a second or two."""
    graph = av.filter.Graph()
    nodes = [graph.add_buffer(width=W, height=H, format="rgb24", time_base=Fraction(1, 10)),
             graph.add("scale", f"out_transfer={transfer}:out_primaries={primaries}:out_color_matrix={matrix}"
                                ":out_range=tv"),
             graph.add("format", pix_fmt), graph.add("buffersink")]
    graph.link_nodes(*nodes).configure()
    graph.push(picture())
    return graph.pull()


def write_source(path, colour: dict, pix_fmt="yuv420p10le", codec="libx265", tagged=True, params="", frames=12):
    """``frames`` of the graded picture at 10 fps (a static scene: one clip), tagged as graded unless not ``tagged``."""
    frame = graded(colour["transfer"], colour["primaries"], colour["matrix"], pix_fmt)
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        if tagged:
            cc = s.codec_context
            cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = (
                frame.color_primaries, frame.color_trc, frame.colorspace, 1)
        x265 = {"x265-params": "log-level=error:bframes=0" + params}  # B-frames: few frames may not mux to mp4
        s.options = {"preset": "ultrafast", **(x265 if codec == "libx265" else {})}
        for i in range(frames):
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    return str(path)


def patch_means(rgb: np.ndarray) -> np.ndarray:
    """Each patch's mean R, G, B, away from its edges (chroma is shared across them)."""
    return np.array([rgb[4:-4, 16 * k + 4 : 16 * k + 12].reshape(-1, 3).mean(axis=0) for k in range(len(PATCHES))])


def error(rgb: np.ndarray) -> np.ndarray:
    return np.abs(patch_means(rgb) - PATCHES)


def first_frame(path) -> av.VideoFrame:
    with av.open(path) as c:
        return next(c.decode(video=0))


def as_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24", src_colorspace="itu709")


def curate(path, *overrides):
    rows = run_cpu_stages(path, "scenes.detectors=[{kind: adaptive}]", "encode.preset=ultrafast", *overrides)
    assert not [r.meta for r in rows if r.kind == "error"]
    return rows


def test_a_pq_source_is_tone_mapped_to_bt709_and_its_colour_recorded(tmp_path):
    reference = curate(write_source(tmp_path / "sdr.mp4", SDR, "yuv420p", "libx264"))
    rows = curate(write_source(tmp_path / "pq.mp4", PQ))
    [clip] = [r for r in rows if r.kind == "clip"]
    [sdr_clip] = [r for r in reference if r.kind == "clip"]
    with av.open(io.BytesIO(clip.mp4)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.pix_fmt, cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range) == ("yuv420p", 1, 1, 1, 1)
        frames = [as_rgb(f) for f in c.decode(video=0)]
    assert len(frames) == clip.meta["num_frames"]
    assert error(frames[len(frames) // 2]).mean() < MEAN_TOLERANCE
    row = C.manifest_row(clip.meta, "part-0")
    assert (row["color_primaries"], row["color_transfer"], row["bit_depth"]) == ("bt2020", "smpte2084", 10)
    assert C.manifest_row(sdr_clip.meta, "part-0")["bit_depth"] == 8
    # The scores are the tone-mapped frames': washed out, luma is 20 levels below the SDR picture's and contrast 34
    # (tone-mapped: 1.5 and 5.5, the EETF's dimmer white).
    assert row["luma"] == pytest.approx(sdr_clip.meta["luma"], abs=4)
    assert row["contrast"] == pytest.approx(sdr_clip.meta["contrast"], abs=8)


def test_drop_leaves_an_hdr_source_out_with_reason_hdr(tmp_path):
    path = write_source(tmp_path / "pq.mp4", PQ)
    rows = curate(path, "encode.hdr=drop")
    assert [r.kind for r in rows] == ["dropped", "summary"]
    dropped, summary = rows[0].meta, rows[1].meta
    assert dropped["dropped_by"] == "hdr" and dropped["color_transfer"] == "smpte2084" and dropped["motion"] is None
    assert (dropped["start_frame"], dropped["end_frame"], summary["num_clips"]) == (0, 12, 1)
    # Not decoded past its first frame, but read to the end once, for the SHA-1 that names it.
    data = Path(path).read_bytes()
    assert dropped["source_sha1"] == summary["source_sha1"] == hashlib.sha1(data).hexdigest()
    assert summary["source_bytes"] == summary["bytes_read"] == len(data)
    # An SDR source goes on as ever.
    rows = curate(write_source(tmp_path / "sdr.mp4", SDR, "yuv420p", "libx264"), "encode.hdr=drop")
    assert [r.kind for r in rows] == ["clip", "summary"]


@pytest.mark.parametrize("colour, params", [
    (HLG, ""),
    (BT2020_SDR, ""),  # wide gamut, SDR transfer: a gamut conversion only
    (PQ, ":master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"),  # 1000 nits
])
def test_other_hdr_and_wide_gamut_tags_convert_to_the_picture(tmp_path, colour, params):
    source = first_frame(write_source(tmp_path / "v.mp4", colour, params=params, frames=1))
    out = sdr(source)
    assert (out.format.name, out.color_primaries, out.color_trc, out.colorspace) == ("yuv420p", 1, 1, 1)
    assert out.pts == source.pts and out.time_base == source.time_base
    assert error(as_rgb(out)).mean() < MEAN_TOLERANCE
    assert error(as_rgb(source.reformat(format="yuv420p"))).mean() > MEAN_TOLERANCE  # as it was: off


def test_a_brighter_mastering_peak_compresses_more_and_keeps_the_mid_tones(tmp_path):
    peak_4000 = ":master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(40000000,50)"
    means = {p: patch_means(as_rgb(sdr(first_frame(write_source(tmp_path / f"{bool(p)}.mp4", PQ, params=p, frames=1)))))
             for p in ("", peak_4000)}
    white, grey = 5, 3
    assert means[peak_4000][white].mean() < means[""][white].mean() - 10
    assert means[peak_4000][grey].mean() == pytest.approx(128, abs=4)


@pytest.mark.parametrize("colour, pix_fmt, tagged", [
    (SDR, "yuv420p10le", True),  # 10-bit BT.709 SDR: only the encoder's 8-bit reformat, as before
    (SDR, "yuv420p", False),  # untagged 8-bit: taken as BT.709, as players do
    (HLG, "yuv420p10le", False),  # untagged, whatever its pixels: nothing says it is HDR
])
def test_sdr_and_untagged_frames_pass_untouched(tmp_path, colour, pix_fmt, tagged):
    codec = "libx265" if pix_fmt.endswith("10le") else "libx264"
    source = first_frame(write_source(tmp_path / "v.mp4", colour, pix_fmt, codec, tagged=tagged, frames=1))
    assert sdr(source) is source


def test_tags_ffmpeg_cannot_convert_are_the_sources_error(tmp_path):
    source = first_frame(write_source(tmp_path / "v.mp4", PQ, frames=1))
    source.colorspace = 14  # an ICtCp matrix: FFmpeg's scaler does not take it
    with pytest.raises(ColourError, match=r"transfer smpte2084, primaries bt2020, matrix 14\) cannot be converted"):
        sdr(source)
    source.colorspace = 9
    assert error(as_rgb(sdr(source))).mean() < MEAN_TOLERANCE  # the next frame converts: no graph left half-fed


def test_the_report_counts_the_hdr_drops_and_lists_sources_with_several_streams(tmp_path):
    """The rows of the CPU stages through the writer (no Ray) into report.html."""
    out = str(tmp_path / "out")
    drop = "encode.hdr=drop"
    rows = curate(write_source(tmp_path / "pq.mp4", PQ), drop)
    rows += curate(write_streams(tmp_path / "thumb_first.mp4", [THUMB, VIDEO]), drop)
    writer = DatasetWriter(out, Storage(), ShardsConfig())
    writer.recover()
    send(writer, rows)
    writer.close()
    assert writer.stats.dropped == {"hdr": 1} and writer.stats.clips_written >= 1
    assert {m["status"] for m in writer.stats.sources.values()} == {"ok"}
    cfg = load_job(None, ["caption.enabled=false", "aesthetic.enabled=false", drop], input="unused", output=out)
    page = Path(write_report(cfg, Storage(), writer.stats, "summary", {}, 1.0)).read_text()
    assert re.search(r"<b>hdr</b></td><td>an HDR source .*?</td><td>1</td>", page)
    assert re.search(r"several video streams.*<td>[^<]*thumb_first.mp4</td><td>1</td><td>2</td>", page, re.S)
