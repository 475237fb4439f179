"""Subjects followed through a clip, their references and their identities across clips, through the real code
(``clip_subjects``, ``source_record``) on synthetic clips with ground truth (``benchmarks.subject_synthetic``):
detection and masks come from the truth, the embedding is a fixed colour and gradient histogram."""

import cv2
import numpy as np
import pytest

from benchmarks import subject_synthetic as S
from common.contract import png_members
from curation.config import IdentitiesConfig, SubjectsConfig
from curation.identities import source_record
from curation.models import references
from curation.models.masks import bbox

CFG = SubjectsConfig()


def every_frame(clip):
    return dict(enumerate(clip.frames))


def subject_of(clip, found, name):
    """The one subject showing actor ``name``, and its track."""
    mine = [k for k, s in enumerate(found.subjects) if clip.object_of(s) == name]
    assert len(mine) == 1, f"{name} is kept as {len(mine)} subjects"
    return found.subjects[mine[0]], found.tracks[mine[0]]


def reference_frames(clip, frames):
    found = S.find(clip, CFG, {i: clip.frames[i] for i in frames})
    return [r["frame"] for r in subject_of(clip, found, "dog")[1]["references"]]


# -- (i) tracking ---------------------------------------------------------------------------------------------------
def test_colour_follows_a_far_move_and_keeps_crossing_subjects_of_one_label_apart():
    from curation.models.subjects import Subject
    from curation.models.tracking import associate, sight

    h, w = 180, 320
    red, blue = (200, 30, 30), (30, 30, 200)

    def frame(i, squares):  # (colour, x) per square: a 40 px "dog" at that x
        image = np.full((h, w, 3), 90, np.uint8)
        subjects = []
        for colour, x in squares:
            mask = np.zeros((h, w), bool)
            mask[70:110, x:x + 40] = True
            image[mask] = colour
            subjects.append(Subject("dog", 0.9, mask))
        return sight(i, image, subjects)

    # the red dog jumps 200 px (0.55 of the diagonal, beyond max_shift) between the frames looked at: one track
    tracks = associate([frame(0, [(red, 10)]), frame(20, [(red, 210)])], h, w, CFG.max_shift)
    assert [[s.frame for s in t.sightings] for t in tracks] == [[0, 20]]
    # a blue dog far away is another subject
    tracks = associate([frame(0, [(red, 10)]), frame(20, [(blue, 210)])], h, w, CFG.max_shift)
    assert len(tracks) == 2
    # two dogs crossing: by position alone each would take the other's track
    tracks = associate([frame(0, [(red, 120), (blue, 160)]), frame(20, [(red, 170), (blue, 110)])], h, w, CFG.max_shift)
    assert sorted(tuple(s.box[0] for s in t.sightings) for t in tracks) == [(120, 170), (160, 110)]


def test_an_object_moving_and_shrinking_is_one_track_with_a_sighting_per_frame():
    clip = S.walk_clip()
    found = S.find(clip, CFG, every_frame(clip))
    assert len(found.subjects) == 2 and found.dropped == 0
    _, track = subject_of(clip, found, "dog")
    points = track["track"]
    assert [p["frame"] for p in points] == list(range(len(clip.frames)))
    for p in points:  # each sighting is the dog of that frame, not the ball
        assert S.box_iou(p["bbox"], bbox(clip.truth["dog"][p["frame"]].visible)) > 0.9
    assert points[0]["area"] > 3 * points[-1]["area"]  # it shrank to half its size, and the track followed
    # the stage's own frames: the same single track, one sighting per frame looked at
    found = S.find(clip, CFG)
    assert [p["frame"] for p in subject_of(clip, found, "dog")[1]["track"]] == sorted(clip.looked_at(CFG.track_frames))


def test_a_track_ends_when_its_object_has_left_the_frame():
    clip = S.exit_clip()
    _, track = subject_of(clip, S.find(clip, CFG, every_frame(clip)), "dog")
    big_enough = [t for t, truth in enumerate(clip.truth["dog"]) if truth.area >= CFG.min_area_frac * S.W * S.H]
    assert [p["frame"] for p in track["track"]] == big_enough and big_enough[-1] < 52


# -- (ii) references ------------------------------------------------------------------------------------------------
def test_references_prefer_a_clean_frame_outside_the_training_window():
    clip = S.refs_clip()
    assert clip.window_end == 49 and clip.keyframe == 24
    # 50 is outside the window and as good as 10 and 40: it comes first; then the best inside (ties: earliest)
    assert reference_frames(clip, [10, 24, 40, 50]) == [50, 10]
    assert sorted(reference_frames(clip, [10, 24, 40, 50, 55])) == [50, 55]
    assert reference_frames(clip, [10, 24, 40]) == [10, 40]  # none outside: inside is fine


# A frame 65 % out of the picture (border_cut 0.31: usable, quality 0.41), or 58 % hidden by the car from the side,
# lies outside the window but is far worse than the clean frames 10 and 40: it is not preferred to them.
@pytest.mark.parametrize("bad", [57, 52], ids=["mostly_out_of_frame", "mostly_hidden_from_the_side"])
def test_references_never_come_from_a_frame_mostly_out_of_frame_or_hidden(bad):
    clip = S.refs_clip()
    truth = clip.truth["dog"][bad]
    assert truth.truncated > 0.5 or truth.occluded > 0.5
    assert bad not in reference_frames(clip, [10, 24, 40, 50, bad])


# -- (iii) what each sighting measures ------------------------------------------------------------------------------
def test_border_cut_rises_as_the_object_leaves_the_frame():
    clip = S.exit_clip()
    _, track = subject_of(clip, S.find(clip, CFG, every_frame(clip)), "dog")
    truth = clip.truth["dog"]
    by_share = sorted((truth[p["frame"]].truncated, p["border_cut"]) for p in track["track"])
    assert all(cut == 0 for share, cut in by_share if share == 0)
    cuts = [cut for share, cut in by_share if share > 0]
    assert len(cuts) >= 5 and cuts == sorted(cuts)  # rises with the share outside the frame
    assert cuts[0] < 0.15 and cuts[-1] > 0.3


def test_occlusion_is_measured_where_the_occluder_passes():
    clip = S.occlusion_clip(S.POLE)  # a labelled pole crossing the dog: a strip through its middle at 21-24
    _, track = subject_of(clip, S.find(clip, CFG, every_frame(clip)), "dog")
    truth = clip.truth["dog"]
    measured = {p["frame"]: p["occluded"] for p in track["track"]}
    crossing = [t for t in measured if truth[t].occluded > 0.3]
    assert len(crossing) >= 3
    for t in crossing:
        assert abs(measured[t] - truth[t].occluded) < 0.1
    assert all(measured[t] == 0 for t in measured if truth[t].occluded == 0)


def test_occlusion_from_the_side_is_measured():
    """An occluder beside the visible part lies outside its box: the share of the outline it touches tells. That
    share saturates (about 0.4 when 93 % is hidden), so it ranks frames rather than giving the hidden share."""
    clip = S.occlusion_clip(S.CAR)
    _, track = subject_of(clip, S.find(clip, CFG, every_frame(clip)), "dog")
    truth = clip.truth["dog"]
    pairs = sorted((truth[p["frame"]].occluded, p["occluded"]) for p in track["track"])
    assert all(m == 0 for t, m in pairs if t == 0)
    hidden = [m for t, m in pairs if t > 0]
    assert len(hidden) >= 8 and hidden == sorted(hidden)  # rises with the share hidden
    assert all(m > 0.25 for t, m in pairs if t > 0.5)


# -- (iv) a subject that fails is lost alone ------------------------------------------------------------------------
def test_a_subject_whose_masks_are_garbage_is_not_found_and_the_other_is_kept():
    clip = S.walk_clip()
    found = S.find(clip, CFG, oracle=S.Oracle(clip, garbage=frozenset({"ball"})))
    assert [clip.object_of(s) for s in found.subjects] == ["dog"]
    assert {g["label"]: g["status"] for g in found.labels} == {"dog": "grounded", "ball": "not_found"}
    assert len(found.pngs) == len(png_members({"subjects": found.subjects, "subject_tracks": found.tracks})) == 3


def test_a_subject_whose_crops_fail_is_dropped_alone(monkeypatch):
    clip = S.walk_clip()
    oracle, real = S.Oracle(clip), references.rgba_crop

    def crop(image, mask):  # fails on the ball's crops only
        if np.count_nonzero(mask & clip.truth["ball"][oracle.frame_of(image)].visible) > 0.5 * np.count_nonzero(mask):
            raise cv2.error("encoder failed")
        return real(image, mask)

    monkeypatch.setattr(references, "rgba_crop", crop)
    found = S.find(clip, CFG, oracle=oracle)
    assert [clip.object_of(s) for s in found.subjects] == ["dog"] and found.dropped == 1
    assert {g["label"]: (g["status"], g["subject"]) for g in found.labels} == {
        "dog": ("grounded", 0), "ball": ("dropped:track_failed", None)}
    assert len(found.tracks) == 1 and found.tracks[0]["embedding"]
    assert len(found.pngs) == 1 + len(found.tracks[0]["references"]) == 3


# -- (v) identities across the clips of a source --------------------------------------------------------------------
def test_identities_match_the_same_object_across_clips_and_not_a_look_alike():
    clips = S.identity_clips()
    found = [S.find(c, CFG) for c in clips]
    rows = [S.manifest_row(c.name, f) for c, f in zip(clips, found)]
    shows = {(c.name, k): c.object_of(s) for c, f in zip(clips, found) for k, s in enumerate(f.subjects)}
    assert sorted(shows.values()) == sorted(["dog", "other_dog"] * 2 + ["ball"] * 3)
    record = source_record(rows, IdentitiesConfig())
    identity = {(r["clip_id"], r["subject"]): r["identity"] for r in record}
    groups = {name: {identity[k] for k, v in shows.items() if v == name} for name in ("dog", "ball", "other_dog")}
    assert all(len(g) == 1 for g in groups.values()), groups  # each object is one identity in every clip
    assert len(set().union(*groups.values())) == 3  # and the look-alike dog is another one
    for r in record:
        me = shows[(r["clip_id"], r["subject"])]
        assert {(o["clip_id"], o["subject"]) for o in r["others"]} == {
            key for key, name in shows.items() if name == me and key[0] != r["clip_id"]}
        for o in r["others"]:  # the other clip's best crop of it: its first reference, where its shard holds it
            row = next(x for x in rows if x["clip_id"] == o["clip_id"])
            assert o["member"] == row["subject_tracks"][o["subject"]]["references"][0]["member"]
            where = next(m for m in row["member_offsets"] if m["member"] == o["member"])
            assert (o["shard"], o["offset"], o["size"]) == (row["shard"], where["offset"], where["size"])
