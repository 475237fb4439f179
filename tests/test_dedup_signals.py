"""The near-duplicate signals (curation.dedup.signals) on real frames: testvideo.mp4's shots (labels.json: leaf
[30,180), deer [240,331), leaf [424,529), texture [558,664)), seen as the scene pass sees them (gray, 256 px wide)."""

from __future__ import annotations

import io

import av
import cv2
import numpy as np
import pytest

from curation.dedup import signals as S

from .conftest import VIDEOS

SHOTS = {"leaf": (30, 180), "deer": (240, 331), "texture": (558, 664)}
ANALYSIS = (256, 144)  # the scene pass's analysis size for a 16:9 source (scenes.analysis_width)


def bits_apart(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@pytest.fixture(scope="module")
def frames() -> dict[int, np.ndarray]:
    """Full-size gray frames of testvideo.mp4: the 4 a fingerprint hashes of each shot, by frame number."""
    wanted = {i for start, end in SHOTS.values() for i in S.clip_frames(start, end)}
    out = {}
    with av.open(str(VIDEOS / "testvideo.mp4")) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="gray")
            if i >= max(wanted):
                break
    return out


def small(gray: np.ndarray, size: tuple[int, int] = ANALYSIS) -> np.ndarray:
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def shot_frames(frames: dict[int, np.ndarray], shot: str) -> list[np.ndarray]:
    return [small(frames[i]) for i in S.clip_frames(*SHOTS[shot])]


def h264_round_trip(images: list[np.ndarray], crf: int = 35) -> list[np.ndarray]:
    """The frames through an H.264 encode at a low bitrate and back."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for img in images:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="gray").reformat(format="yuv420p")))
        out.mux(stream.encode())
    buf.seek(0)
    with av.open(buf) as inp:
        return [f.to_ndarray(format="gray") for f in inp.decode(video=0)]


def test_mirror_is_an_exact_xor(frames):
    for shot in SHOTS:
        for gray in shot_frames(frames, shot):
            assert S.frame_hash(np.ascontiguousarray(gray[:, ::-1])) == S.frame_hash(gray) ^ S.MIRROR


def test_hash_survives_resize_brightness_and_reencode(frames):
    grays = [g for shot in SHOTS for g in shot_frames(frames, shot)]
    encoded = h264_round_trip(grays)
    assert len(encoded) == len(grays)
    for gray, back in zip(grays, encoded):
        h = S.frame_hash(gray)
        assert bits_apart(h, S.frame_hash(small(gray, (128, 72)))) <= 4  # half the size
        assert bits_apart(h, S.frame_hash(small(gray, (512, 288)))) <= 4  # twice (as from a larger source)
        brighter = np.clip(gray.astype(np.float32) * 0.85 + 30, 0, 255).astype(np.uint8)
        assert bits_apart(h, S.frame_hash(brighter)) <= 4
        assert bits_apart(h, S.frame_hash(back)) <= 6  # H.264 at crf 35


def test_different_shots_hash_far_apart(frames):
    hashes = {shot: [S.frame_hash(g) for g in shot_frames(frames, shot)] for shot in SHOTS}
    for a in SHOTS:
        for b in SHOTS:
            if a < b:
                closest = min(bits_apart(x, y) for x in hashes[a] for y in hashes[b])
                assert closest >= 16, (a, b, closest)  # of 63; unrelated frames: about 31


def test_fingerprint_similarity_of_a_mirrored_clip(frames):
    def bits(grays):
        return S.fingerprint_bits(S.fingerprint_array([S.fingerprint([S.frame_hash(g) for g in grays])]))

    deer = shot_frames(frames, "deer")
    clip = bits(deer)
    mirrored = bits([np.ascontiguousarray(g[:, ::-1]) for g in h264_round_trip(deer)])
    sim = S.fingerprint_similarity(clip, mirrored)[0, 0]
    assert 0.95 <= sim <= 1.0  # 1 - (the re-encode's few bits, if any)
    assert S.fingerprint_similarity(clip, bits([np.ascontiguousarray(g[:, ::-1]) for g in deer]))[0, 0] == 1.0
    plain = 0.5 + float((clip @ mirrored.T)[0, 0]) / (2 * clip.shape[1])  # without the mirror flip: not a match
    assert plain < 0.75
    for other in ("leaf", "texture"):
        assert S.fingerprint_similarity(clip, bits(shot_frames(frames, other)))[0, 0] < 0.75


def test_fingerprint_text_round_trip():
    hashes = [0, 2**64 - 1, 0x0123456789ABCDEF, S.MIRROR]
    text = S.fingerprint(hashes)
    assert len(text) == 16 * S.FRAMES
    assert S.fingerprint_array([text, text.upper()]).tolist() == [hashes, hashes]


def test_embedding_round_trip():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, 24)).astype(np.float32)
    back = S.embedding_array([S.encode_embedding(v) for v in vectors])
    assert back.shape == (3, 24) and back.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(back, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), atol=2e-3)


@pytest.mark.parametrize("text", ["", "abc", "0" * 63, "0" * 65, None, 12])
def test_malformed_fingerprint_raises_naming_it(text):
    with pytest.raises(ValueError, match=r"fingerprint .* is not"):
        S.fingerprint_array(["0" * 64, text])


# Text of the right length that is not 64 hex digits.
@pytest.mark.parametrize("text", ["g" * 64, "-" + "1" * 63, "+" + "1" * 63, "0x" + "1" * 62, " " + "1" * 63])
def test_malformed_hex_fingerprint_raises_naming_it(text):
    with pytest.raises(ValueError, match=r"fingerprint .* is not"):
        S.fingerprint_array([text])


@pytest.mark.parametrize("text", ["not base64!", "AAAA", "AAA", None])
def test_malformed_embedding_raises_naming_it(text):
    with pytest.raises(ValueError, match=r"embedding .* is not base64"):
        S.embedding_array([S.encode_embedding(np.ones(4)), text])


def test_embeddings_of_different_sizes_raise():
    with pytest.raises(ValueError, match="different CLIP models"):
        S.embedding_array([S.encode_embedding(np.ones(4)), S.encode_embedding(np.ones(8))])
