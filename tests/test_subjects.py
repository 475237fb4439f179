"""Subjects: RLE, mask clean-up and selection rules, RGBA crops, and the tiny detector + SAM on real photos/clips."""

import io
import json

import av

import cv2
import numpy as np
import pyarrow as pa
import pytest

from common import contract as C
from curation.config import SubjectsConfig
from curation.models.detection import SamSegmenter
from curation.models.masks import bbox, clean_mask, rgba_crop, rle_encode
from curation.models.subjects import (
    Detection,
    Subject,
    drop_parts_of_people,
    extract_subjects,
    merge_duplicates,
    rank_and_cap,
    to_record,
    top_per_label,
)
from curation.pipeline.row import Row
from curation.stages.caption import CaptionPrepStage, CaptionStage
from curation.stages.subjects import SubjectStage
from curation.video.frames import decode_frames

from .model_stage_fixtures import ASSETS, clip_rows, job, run, taught_mllm  # noqa: F401


def rle_decode(rle: str) -> np.ndarray:
    """The mask of a manifest's COCO-style RLE (column-major run lengths, starting with a run of 0s)."""
    data = json.loads(rle)
    h, w = data["size"]
    counts = np.asarray(data["counts"], dtype=np.int64)
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts cover {flat.size} pixels, size says {h}x{w}")
    return flat.reshape((h, w), order="F")


def rect(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def photo(name):
    return cv2.cvtColor(cv2.imread(str(ASSETS / name)), cv2.COLOR_BGR2RGB)


# -- RLE ------------------------------------------------------------------------------------------------------
def test_rle_is_column_major_and_starts_with_zeros():
    assert json.loads(rle_encode(np.array([[0, 1], [1, 1]], bool))) == {"size": [2, 2], "counts": [1, 3]}
    assert json.loads(rle_encode(np.array([[1, 0, 0], [1, 1, 0]], bool))) == {"size": [2, 3], "counts": [0, 2, 1, 1, 2]}


@pytest.mark.parametrize("h, w", [(1, 1), (5, 7), (64, 33)])
def test_rle_round_trip(h, w):
    rng = np.random.default_rng(h * w)
    for mask in (rng.random((h, w)) < 0.3, np.ones((h, w), bool), np.zeros((h, w), bool)):
        assert np.array_equal(rle_decode(rle_encode(mask)), mask)


def test_rle_with_wrong_counts_is_rejected():
    with pytest.raises(ValueError):
        rle_decode(json.dumps({"size": [2, 2], "counts": [1, 2]}))


# -- clean-up -------------------------------------------------------------------------------------------------
def test_cleanup_removes_specks_and_fills_pinholes():
    m = rect(100, 100, 20, 20, 80, 80)
    m[50, 50] = False  # pinhole
    m[5, 5] = m[95, 95] = True  # specks
    out = clean_mask(m, kernel=5, min_area=50, max_components=1)
    assert out[50, 50] and not out[5, 5] and not out[95, 95]
    assert abs(int(out.sum()) - 60 * 60) < 60  # the body is kept (closing rounds the corners a little)


def test_cleanup_drops_tiny_and_fragmented_masks():
    assert clean_mask(rect(100, 100, 10, 10, 16, 16), kernel=3, min_area=50, max_components=3) is None
    blobs = np.zeros((100, 100), bool)
    for i in range(4):
        blobs[10:30, i * 25 : i * 25 + 15] = True
    assert clean_mask(blobs, kernel=3, min_area=50, max_components=3) is None
    assert clean_mask(blobs, kernel=1, min_area=50, max_components=4).sum() == blobs.sum()
    # pieces below min_area do not count as fragments: they are removed
    blobs[80:84, 80:84] = True
    assert clean_mask(blobs, kernel=1, min_area=50, max_components=4).sum() == blobs.sum() - 16


# -- selection ------------------------------------------------------------------------------------------------
def test_objects_overlapping_a_person_above_the_threshold_are_dropped():
    person = Subject("young man", 0.9, rect(100, 100, 20, 0, 60, 100))  # 4000 px
    shirt = Subject("shirt", 0.8, rect(100, 100, 20, 20, 60, 60))  # IoU 1600/4000 = 0.4
    dog = Subject("dog", 0.7, rect(100, 100, 50, 60, 100, 100))  # IoU 400/5600 ~ 0.07
    face = Subject("face", 0.6, rect(100, 100, 30, 0, 50, 20))  # a person label itself: kept
    kept = drop_parts_of_people([person, shirt, dog, face], max_iou=0.25)
    assert [s.label for s in kept] == ["young man", "dog", "face"]
    assert len(drop_parts_of_people([person, shirt, dog], max_iou=0.5)) == 3


def test_duplicates_across_labels_merge_into_the_best_scoring():
    car = Subject("car", 0.6, rect(100, 100, 10, 10, 50, 50))
    vehicle = Subject("vehicle", 0.8, rect(100, 100, 12, 10, 50, 50))  # IoU 0.95 with car
    other = Subject("car", 0.5, rect(100, 100, 40, 40, 90, 90))  # IoU ~0.05: a second car
    assert [(s.label, s.score) for s in merge_duplicates([car, vehicle, other], 0.7)] == [("vehicle", 0.8), ("car", 0.5)]


def test_cap_keeps_six_best_by_score_times_area_and_counts_the_rest():
    subjects = [Subject(f"s{i}", score, rect(100, 100, 0, 0, 10, side)) for i, (score, side) in
                enumerate([(0.9, 10), (0.1, 90), (0.5, 50), (0.3, 20), (0.8, 30), (0.2, 40), (0.4, 60), (0.6, 5), (0.7, 8)])]
    kept, dropped = rank_and_cap(subjects, 6)
    products = sorted((s.score * s.area for s in subjects), reverse=True)
    assert [s.score * s.area for s in kept] == products[:6] and dropped == 3
    assert rank_and_cap(subjects[:4], 6)[1] == 0


def test_top_boxes_per_label_above_threshold():
    dets = [Detection("cat", s, (0, 0, 1, 1)) for s in (0.3, 0.9, 0.5, 0.1)] + [Detection("dog", 0.2, (0, 0, 1, 1))]
    assert [(d.label, d.score) for d in top_per_label(dets, 0.25, 2)] == [("cat", 0.9), ("cat", 0.5)]


def test_extraction_applies_every_rule_and_caps_at_six():
    h, w = 120, 160
    boxes = {f"thing{i}": (i * 20, 0, i * 20 + 15, 60) for i in range(8)}  # eight distinct objects
    boxes.update(person=(0, 60, 160, 120), hat=(0, 60, 160, 100), speck=(150, 110, 152, 112))

    def detect(image, labels):
        assert image.shape == (h, w, 3)
        return [Detection(lab, 0.5 + 0.01 * i, boxes[lab]) for i, lab in enumerate(labels)]

    def segment(image, bxs):
        return np.stack([rect(h, w, *map(int, b)) for b in bxs])

    labels = list(boxes)
    subjects, dropped = extract_subjects(np.zeros((h, w, 3), np.uint8), labels, detect, segment, SubjectsConfig())
    names = [s.label for s in subjects]
    assert len(subjects) == 6 and dropped == 3  # 8 things + person survive; the hat and the speck do not
    assert names[0] == "person" and "hat" not in names and "speck" not in names
    assert extract_subjects(np.zeros((h, w, 3), np.uint8), [], detect, segment, SubjectsConfig()) == ([], 0)


# -- crops ----------------------------------------------------------------------------------------------------
def check_record_matches_crop(record, png, image, mask):
    x0, y0, x1, y1 = map(int, record["bbox"])
    rgba = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    assert rgba.shape == (y1 - y0, x1 - x0, 4)
    inside = mask[y0:y1, x0:x1]
    assert np.array_equal(rgba[..., 3], inside.astype(np.uint8) * 255)  # alpha is the mask within the box
    assert np.array_equal(rgba[inside][:, :3], image[y0:y1, x0:x1][inside])  # subject pixels untouched
    assert not rgba[~inside].any()  # background removed
    assert mask.sum() == inside.sum() == record["area"]  # the box holds the whole mask
    assert np.array_equal(rle_decode(record["mask_rle"]), mask)


def test_tiny_sam_masks_from_known_boxes_give_aligned_crops(tiny_paths):
    cfg = job(tiny_paths).subjects
    segment = SamSegmenter(cfg, "cpu")
    for name, boxes in [("bus.jpg", [[50, 400, 250, 900], [20, 220, 800, 760]]), ("zidane.jpg", [[740, 40, 1150, 710]])]:
        image = photo(name)
        masks = segment(image, np.array(boxes, np.float32))
        assert masks.shape == (len(boxes), *image.shape[:2]) and masks.dtype == bool
        for i, mask in enumerate(masks):
            assert mask.any()  # random weights still give a mask; its shape is not meaningful
            record, png = to_record(Subject("bus", 0.5, mask), frame=i), rgba_crop(image, mask)
            assert record["frame"] == i and record["bbox"] == list(map(float, bbox(mask)))
            check_record_matches_crop(record, png, image, mask)


# -- the stage ------------------------------------------------------------------------------------------------
FPS, FRAMES = 8.0, 24  # the training window takes frames [0, 17): the keyframe is 8, frame 21 lies outside


@pytest.fixture(scope="module")
def still_clips():
    """Each photo as a still H.264 clip, and its decoded keyframe (what masks and crops are cut from)."""
    out = {}
    for name in ("bus.jpg", "zidane.jpg"):
        image = photo(name)
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as c:
            st = c.add_stream("libx264", rate=int(FPS))
            st.width, st.height, st.pix_fmt, st.options = image.shape[1], image.shape[0], "yuv420p", {"crf": "18"}
            for _ in range(FRAMES):
                c.mux(st.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            c.mux(st.encode(None))
        mp4 = buf.getvalue()
        out[name] = (mp4, decode_frames(mp4, {8})[8])
    return out


def clip_row(still_clips, name, labels, clip_id):
    mp4, key = still_clips[name]
    meta = {"clip_id": clip_id, "subject_labels": labels, "fps": FPS, "num_frames": FRAMES,
            "width": key.shape[1], "height": key.shape[0]}
    return Row("clip", name, meta, mp4=mp4)


def stage(tiny_paths, *overrides):
    s = SubjectStage(job(tiny_paths, "subjects.box_threshold=0", *overrides))
    s.setup()
    return s


def check_subject_row(row, image_shape):
    h, w = image_shape[:2]
    m = row.meta
    subjects, tracks = m["subjects"], m["subject_tracks"]
    assert len(tracks) == len(subjects) <= C.MAX_SUBJECTS and row.pngs is not None
    assert C.png_members(m)[:len(subjects)] == [C.subject_member(k) for k in range(len(subjects))]
    assert len(row.pngs) == len(C.png_members(m))
    pa.array(subjects, type=C.SUBJECT)  # exactly the contract's fields and types
    pa.array(tracks, type=C.SUBJECT_TRACK)
    pa.array(m["subject_grounding"], type=C.LABEL)
    assert all(set(s) == set(C.SUBJECT.names) for s in subjects)
    window = C.window_frames(m["fps"], m["num_frames"])
    assert m["keyframe"] == window // 2
    for s, t in zip(subjects, tracks):
        x0, y0, x1, y1 = s["bbox"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and s["frame"] < window  # the same-clip crop: in the window
        assert rle_decode(s["mask_rle"]).shape == (h, w)
        assert s["frame"] in [p["frame"] for p in t["track"]]
        assert all(r["frame"] != s["frame"] and r["in_window"] == (r["frame"] < window) for r in t["references"])
    grounded = {g["label"] for g in m["subject_grounding"] if g["status"] == "grounded"}
    assert grounded == {s["label"] for s in subjects}
    assert [g["label"] for g in m["subject_grounding"]] == list(dict.fromkeys(m["subject_labels"]))


# Clean-up that lets the random models' garbage masks through, so they reach the crops, the cap and the manifest.
LOOSE = ("subjects.morph_kernel=1", "subjects.max_components=100000", "subjects.min_area_frac=0",
         "subjects.dedupe_iou=1", "subjects.face_iou=1", "subjects.min_reference_quality=0",
         "subjects.max_border_cut=1")


def test_real_photos_through_tiny_detector_and_sam(tiny_paths, still_clips):
    s = stage(tiny_paths, *LOOSE, "subjects.max_boxes_per_label=8", "subjects.max_subjects=3")
    rows = s([clip_row(still_clips, "bus.jpg", ["person", "bus", "tie"], "a"),
              clip_row(still_clips, "zidane.jpg", ["man", "tie"], "b")])
    assert [r.kind for r in rows] == ["clip", "clip"]
    check_subject_row(rows[0], still_clips["bus.jpg"][1].shape)
    check_subject_row(rows[1], still_clips["zidane.jpg"][1].shape)
    m = rows[0].meta
    assert len(m["subjects"]) == 3 and m["num_subjects_dropped"] > 0
    # a still clip: each subject is seen in every frame looked at, and its references come from them
    assert all(len(t["track"]) >= 2 and t["references"] for t in m["subject_tracks"])
    frames = decode_frames(rows[0].mp4, {p["frame"] for t in m["subject_tracks"] for p in t["track"]})
    for record, png in zip(m["subjects"], rows[0].pngs):
        check_record_matches_crop(record, png, frames[record["frame"]], rle_decode(record["mask_rle"]))
    assert all(t["embedding"] for t in m["subject_tracks"])


def test_grounding_dino_option_on_a_real_photo(tiny_paths, still_clips):
    s = stage(tiny_paths, *LOOSE, "subjects.detector=grounding_dino",
              f"subjects.detector_weights={tiny_paths['grounding_dino']}", "subjects.max_boxes_per_label=1",
              "subjects.track_frames=1")
    [row] = s([clip_row(still_clips, "bus.jpg", ["person", "bus", "red tie"], "a")])
    check_subject_row(row, still_clips["bus.jpg"][1].shape)
    # every label is scored on its own tokens: a random model spreads its boxes over all three
    assert {r["label"] for r in row.meta["subjects"]} == {"person", "bus", "red tie"}
    assert all(not t["references"] for t in row.meta["subject_tracks"])  # one frame looked at: no other frame


def test_a_clip_failing_in_the_subject_stage_loses_only_that_clip(tiny_paths, still_clips):
    s = stage(tiny_paths)
    real = s.detect

    def detect(image, labels):
        if "unicorn" in labels:
            raise RuntimeError("CUDA out of memory")
        return real(image, labels)

    s.detect = detect
    broken = clip_row(still_clips, "bus.jpg", ["bus"], "c").replace(mp4=b"\x00\x00\x00\x18ftypmp42 broken")
    rows = s([clip_row(still_clips, "bus.jpg", ["unicorn"], "a"), clip_row(still_clips, "zidane.jpg", ["man"], "b"),
              broken])
    assert [r.kind for r in rows] == ["error", "clip", "error"]
    assert rows[0].meta["clip_id"] == "a" and "out of memory" in rows[0].meta["message"]
    assert rows[2].meta["clip_id"] == "c" and rows[0].meta["stage"] == "subjects"
    check_subject_row(rows[1], still_clips["zidane.jpg"][1].shape)


def test_labels_not_found_are_recorded_as_such(tiny_paths, still_clips):
    s = stage(tiny_paths)
    s.detect = lambda image, labels: []  # nothing found
    [row] = s([clip_row(still_clips, "bus.jpg", ["bus", "tie"], "a")])
    assert row.meta["subjects"] == [] and row.pngs == []
    assert row.meta["subject_grounding"] == [{"label": "bus", "status": "not_found", "subject": None},
                                             {"label": "tie", "status": "not_found", "subject": None}]


def test_real_clips_through_both_stages_fit_the_manifest(tiny_paths, taught_mllm, clip_rows):
    cfg = job(tiny_paths, f"caption.model={taught_mllm}", "subjects.box_threshold=0", *LOOSE)
    rows = run([CaptionPrepStage, CaptionStage, SubjectStage], cfg, clip_rows)
    assert [r.kind for r in rows] == ["clip"] * len(clip_rows)
    records = []
    for row in rows:
        m = row.meta
        assert m["subject_labels"] == ["person", "car"] and row.frames is None
        check_subject_row(row, (m["height"], m["width"]))
        records.append(C.manifest_row(m, "part-000000"))
    assert any(t["references"] for r in rows for t in r.meta["subject_tracks"])
    pa.Table.from_pylist(records, schema=C.MANIFEST_SCHEMA)  # the writer's manifest accepts every row
    assert sum(len(r.pngs) for r in rows) > 0
