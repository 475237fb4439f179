"""The colour of a source's frames, and their conversion to the SDR BT.709 every clip is encoded in.

A frame passes untouched unless it needs converting: an HDR transfer (PQ, HLG) or wide-gamut primaries (BT.2020,
P3). SDR costs a look at two tags per frame. An HDR frame is brought to PQ BT.2020 (HLG as shown on its 1000-nit
reference display), its luma tone-mapped with the BT.2390 EETF from the source's peak down to SDR's reference white
of 203 nits (BT.2408), the chroma scaled alike (BT.2390's rule for Y'CbCr), then converted to BT.709 by FFmpeg's own
colour management (PQ to linear light, the BT.2020 to BT.709 gamut, the BT.709 transfer; what is still out of range is
clipped). A wide-gamut SDR frame takes that last step only. The PyAV build has no zscale, but its swscale manages
colour (the scale filter's in/out transfer and primaries): the heavy lifting stays in C, the EETF is two table
look-ups.
"""

from __future__ import annotations

import functools
import struct

import av
import av.filter
import numpy as np
from av.sidedata.sidedata import Type
from av.video.reformatter import ColorPrimaries, ColorTrc

from curation.pipeline.faults import SourceError

HDR_TRANSFERS = {ColorTrc.SMPTE2084, ColorTrc.ARIB_STD_B67}
WIDE_PRIMARIES = {ColorPrimaries.BT2020, ColorPrimaries.SMPTE431, ColorPrimaries.SMPTE432}
BT709 = 1  # FFmpeg's code for BT.709 primaries, transfer and matrix alike
SDR_WHITE_NITS = 203.0  # BT.2408: where SDR's 100% sits on an HDR display
DEFAULT_PEAK_NITS = 1000.0  # without mastering metadata: HLG's reference display, the usual PQ grade

# The scale filter's conversions: (pixel format, options). Relative colorimetric: white to white, no tone curve of
# FFmpeg's own (its perceptual one darkens the mid-tones a source without highlights keeps under the EETF).
_RELATIVE = ":out_range=tv:intent=relative_colorimetric"
TO_PQ = "yuv444p16le", "out_transfer=smpte2084:out_primaries=bt2020:out_color_matrix=bt2020nc" + _RELATIVE
TO_SDR = "yuv420p", "out_transfer=bt709:out_primaries=bt709:out_color_matrix=bt709" + _RELATIVE
BLACK16, SPAN16, ZERO16 = 16 << 8, 219 << 8, 128 << 8  # TO_PQ's levels: black, black to white, zero chroma


class ColourError(SourceError):
    """A source's frames cannot be converted to SDR BT.709 (tags FFmpeg's colour management does not take)."""


def _name(enum, value: int) -> str:
    """FFmpeg's spelling of a colour tag (bt2020, smpte2084, arib-std-b67), or the number of one PyAV does not name."""
    try:
        return enum(value).name.lower().replace("_", "-")
    except ValueError:
        return str(value)


HDR_TRANSFER_NAMES = {_name(ColorTrc, t) for t in HDR_TRANSFERS}  # smpte2084 (PQ), arib-std-b67 (HLG)


def colour_of(frame: av.VideoFrame) -> dict:
    """The manifest's colour fields of a decoded (not converted) frame."""
    return {
        "color_primaries": _name(ColorPrimaries, frame.color_primaries),
        "color_transfer": _name(ColorTrc, frame.color_trc),
        "bit_depth": frame.format.components[0].bits,
    }


def is_hdr_transfer(name: str) -> bool:
    """Whether a ``color_transfer`` as ``colour_of`` names it is an HDR one."""
    return name in HDR_TRANSFER_NAMES


def is_bt709(frame: av.VideoFrame) -> bool:
    """Tagged SDR BT.709 throughout, as every converted frame is."""
    return frame.color_primaries == frame.color_trc == frame.colorspace == BT709


def sdr(frame: av.VideoFrame) -> av.VideoFrame:
    """``frame`` as SDR BT.709 yuv420p if it is HDR or wide-gamut, else ``frame`` itself."""
    hdr = frame.color_trc in HDR_TRANSFERS
    if not hdr and frame.color_primaries not in WIDE_PRIMARIES:
        return frame
    out = _scaled(_tone_mapped(_scaled(frame, TO_PQ), _peak_nits(frame)) if hdr else frame, TO_SDR)
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


def _peak_nits(frame: av.VideoFrame) -> float:
    """The source's peak luminance: its mastering display's (HDR10 metadata), else DEFAULT_PEAK_NITS."""
    data = frame.side_data.get(Type.MASTERING_DISPLAY_METADATA)
    if data is None:
        return DEFAULT_PEAK_NITS
    # AVMasteringDisplayMetadata: 8 AVRationals (primaries, white point, min luminance), max luminance, 2 flags.
    num, den, _, has_luminance = struct.unpack_from("<iiii", bytes(data), 72)
    peak = num / den if has_luminance and den > 0 else 0.0
    return peak if 0 < peak <= 10000 else DEFAULT_PEAK_NITS


def _pq(nits: float) -> float:
    """The PQ (SMPTE ST 2084) signal of an absolute luminance."""
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 32, 3424 / 4096, 2413 / 128, 2392 / 128
    y = (nits / 10000) ** m1
    return ((c1 + c2 * y) / (1 + c3 * y)) ** m2


def eetf(signal: np.ndarray, source_peak: float, target_peak: float) -> np.ndarray:
    """BT.2390's EETF on PQ signals (0..1): the identity up to a knee, then a Hermite spline that takes the source's
    peak to the target's. Signals above the source's peak are taken as it."""
    src, max_lum = _pq(source_peak), _pq(target_peak) / _pq(source_peak)
    knee = 1.5 * max_lum - 0.5
    e = np.minimum(signal / src, 1.0)
    if knee >= 1:  # the source is no brighter than the target
        return e * src
    t = (e - knee) / (1 - knee)
    spline = (2 * t**3 - 3 * t**2 + 1) * knee + (t**3 - 2 * t**2 + t) * (1 - knee) + (-2 * t**3 + 3 * t**2) * max_lum
    return np.where(e < knee, e, spline) * src


@functools.lru_cache(maxsize=4)
def _eetf_tables(peak_nits: float) -> tuple[np.ndarray, np.ndarray]:
    """For every 16-bit PQ luma code: the code after the EETF from ``peak_nits`` to SDR white, and the factor its
    chroma is scaled by (the luma's ratio, at most 1)."""
    signal = np.clip((np.arange(65536) - BLACK16) / SPAN16, 0.0, 1.0)
    mapped = eetf(signal, peak_nits, SDR_WHITE_NITS)
    gain = np.divide(mapped, signal, out=np.ones_like(signal), where=signal > 0)
    return np.round(BLACK16 + SPAN16 * mapped).astype(np.uint16), gain.astype(np.float32)


def _tone_mapped(pq: av.VideoFrame, peak_nits: float) -> av.VideoFrame:
    """``pq`` (yuv444p16le, PQ, limited range, ours to change) with its luma through the EETF, in place."""
    y, cb, cr = (np.frombuffer(p, np.uint16).reshape(p.height, p.line_size // 2)[:, : p.width] for p in pq.planes)
    codes, gains = _eetf_tables(peak_nits)
    gain = gains[y]
    for c in (cb, cr):
        c[...] = (c - np.float32(ZERO16)) * gain + np.float32(ZERO16 + 0.5)
    y[...] = codes[y]
    return pq


def _scaled(frame: av.VideoFrame, target: tuple[str, str]) -> av.VideoFrame:
    """``frame`` through the scale filter to ``target``."""
    tags = (frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range)
    try:
        graph = _graph(frame.width, frame.height, frame.format.name, tags, target)
        graph.push(frame)
        return graph.pull()
    except av.error.FFmpegError as e:  # tags FFmpeg takes but cannot convert (an ICtCp matrix, reserved primaries)
        _graph.cache_clear()  # a graph that failed mid-frame may hold it: never reuse one
        raise ColourError(f"its frames (transfer {_name(ColorTrc, tags[1])}, primaries "
                          f"{_name(ColorPrimaries, tags[0])}, matrix {tags[2]}) cannot be converted to SDR BT.709: "
                          f"{e.strerror or e}") from None


@functools.lru_cache(maxsize=4)
def _graph(width: int, height: int, pix_fmt: str, tags: tuple[int, int, int, int],
           target: tuple[str, str]) -> av.filter.Graph:
    """A scale filter from frames of this size, format and colour to ``target`` (pixel format, scale options).
    Kept for the next frames and sources alike: FFmpeg builds a table per colour conversion, in a second or two."""
    _, _, colorspace, color_range = tags
    graph = av.filter.Graph()
    source = graph.add("buffer", f"video_size={width}x{height}:pix_fmt={pix_fmt}:time_base=1/1"
                                 f":colorspace={colorspace}:range={color_range}")
    pix_out, options = target
    graph.link_nodes(source, graph.add("scale", options), graph.add("format", pix_out), graph.add("buffersink"))
    graph.configure()
    return graph
