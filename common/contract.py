"""The dataset contract between curation (writer) and training (reader): layout, sample members, schemas, and its
rules as functions (how a member name parses, which shards are committed).

A schema, not a framework: no Ray or video code here, so the trainer can import it cheaply.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import pyarrow as pa

from .storage import Storage

PIPELINE_VERSION = "0.3.0"
MAX_SUBJECTS = 6
MAX_REFERENCES = 4  # reference crops per subject a sample may hold, besides its same-clip crop

SHARDS_DIR = "shards"
MANIFEST_DIR = "manifest"
ERRORS_DIR = "errors"
DONE_DIR = "done"
DEDUP_DIR = "dedup"  # near-duplicate groups (curation.dedup): a record beside the manifest; shards stay as they are
DEDUP_FILE = "clips.parquet"
IDENTITY_DIR = "identities"  # subjects matched across the clips of a source (curation.identities): a record beside
IDENTITY_FILE = "subjects.parquet"  # the manifest, like the dedup record
STAGING_DIR = "staging"  # a writer's small last shards wait here until merged: not part of the dataset
REPORT_FILE = "report.html"

# Members of one WebDataset sample, keyed "<clip_id>.<member>".
MP4 = "mp4"
JSON = "json"
CAPTION = "caption.txt"


@dataclass(frozen=True)
class TrainingWindow:
    """The frames the trainer takes from a clip: from its first frame, one every ``step(fps)`` frames (the target
    frame rate), as many as the longest of ``frame_counts`` the clip holds. Curation's defaults follow from it (no
    kept clip shorter than the shortest window, long scenes split into parts that each hold one), and the caption
    and subject frames are drawn from the window the clip will give.

    The counts are 1 + 8k, which CogVideoX's VAE keeps in place (an odd latent count). The default offers every such
    count from 17 (2 s at 8 fps: shorter is close to a still image for a video model) to 49 (6 s, CogVideoX's
    training length and the model's ``video.num_frames``): a real clip trains on its whole length, rounded down to a
    step of 1 s, instead of being skipped below 6 s."""

    frame_counts: tuple[int, ...] = (17, 25, 33, 41, 49)
    fps: float | None = 8.0  # None: every frame of the clip

    def step(self, clip_fps: float) -> int:
        return 1 if self.fps is None else max(1, round(clip_fps / self.fps))

    def longest(self, frames: int) -> int | None:
        """The longest frame count within ``frames`` frames taken at the step, or None (too short)."""
        return max((n for n in self.frame_counts if n <= frames), default=None)

    def frames_for(self, clip_fps: float, num_frames: int) -> int | None:
        """The longest frame count a clip of ``num_frames`` frames at ``clip_fps`` gives, or None (too short)."""
        return self.longest((num_frames - 1) // self.step(clip_fps) + 1 if num_frames > 0 else 0)

    def span(self, clip_fps: float, frames: int) -> int:
        """The clip frames from the first to the last frame a window of ``frames`` takes, inclusive."""
        return (frames - 1) * self.step(clip_fps) + 1

    def shortest_clip(self, clip_fps: float) -> int:
        return self.span(clip_fps, min(self.frame_counts))

    def longest_clip(self, clip_fps: float) -> int:
        return self.span(clip_fps, max(self.frame_counts))


TRAINING_WINDOW = TrainingWindow()


def window_frames(clip_fps: float, num_frames: int) -> int:
    """The clip frames the default trainer's window spans (what captions and subject crops describe): the longest
    window the clip holds, or the whole clip when it holds none."""
    frames = TRAINING_WINDOW.frames_for(clip_fps, num_frames)
    return num_frames if frames is None else TRAINING_WINDOW.span(clip_fps, frames)


def subject_member(k: int) -> str:
    """Subject ``k``'s crop from the clip's keyframe, inside the training window (the ``same_clip`` reference)."""
    return f"subject_{k}.png"


def reference_member(k: int, r: int) -> str:
    """Subject ``k``'s ``r``-th reference crop: from another frame of the clip, chosen for quality, outside the
    training window where one is good enough (the ``other_frames`` reference)."""
    return f"subject_{k}_ref{r}.png"


def png_members(meta: dict) -> list[str]:
    """The member names of a clip's subject crops, in the order the subjects stage makes them: each subject's
    keyframe crop, then every reference of every subject."""
    names = [subject_member(k) for k in range(len(meta.get("subjects") or []))]
    return names + [r["member"] for t in meta.get("subject_tracks") or [] for r in t["references"]]


# Every member a sample may hold.
FIELDS = (MP4, JSON, CAPTION, *(subject_member(k) for k in range(MAX_SUBJECTS)),
          *(reference_member(k, r) for k in range(MAX_SUBJECTS) for r in range(MAX_REFERENCES)))


def is_field(field: str) -> bool:
    return field in FIELDS


_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def check_clip_id(clip_id: str) -> str:
    """A sample key may hold letters, digits, '_' and '-': a dot would split the WebDataset key."""
    if not _KEY.match(clip_id):
        raise ValueError(f"invalid clip id {clip_id!r}: only letters, digits, '_' and '-' are allowed")
    return clip_id


def split_member(name: str) -> tuple[str, str]:
    """A tar member name ``<clip_id>.<field>`` -> (clip_id, field); ValueError for anything else (a '/', '..', a
    key outside the alphabet): members are read by name, never extracted to the paths they name."""
    key, _, suffix = name.partition(".")
    if "/" in name or ".." in name or not suffix:
        raise ValueError(f"unsafe or malformed member name {name!r}")
    return check_clip_id(key), suffix


def make_clip_id(source_sha1: str, start_frame: int, end_frame: int) -> str:
    """Deterministic, so a rerun produces the same ids and duplicates can be recognised."""
    return check_clip_id(f"{source_sha1[:16]}_{start_frame:07d}_{end_frame:07d}")


def shard_name(clips: list[tuple[str, str]]) -> str:
    """A shard is named after the clips it holds, (source URI, clip id) each, not after when it was written: shards
    written by many workers in any order never collide, a retried task that packs the same clips writes the same
    shard again, and a byte-identical copy of a source (same clip ids) writes shards of its own."""
    digest = hashlib.sha1("\n".join(sorted(f"{uri} {cid}" for uri, cid in clips)).encode()).hexdigest()[:20]
    return f"part-{digest}"


def committed_shards(storage: Storage, root: str) -> list[str]:
    """The shard URIs of a dataset root, sorted: those its manifest names. The manifest part is the commit point, so
    a shard without one (its writer died between the two) was never committed and is not part of the dataset."""
    parts = storage.list(storage.join(root, MANIFEST_DIR), ".parquet")
    return [storage.join(root, SHARDS_DIR, p.rsplit("/", 1)[-1].removesuffix(".parquet") + ".tar") for p in parts]


def read_parquet_dir(storage: Storage, prefix: str, schema: pa.Schema, columns: list[str] | None = None,
                     unreadable: list[str] | None = None) -> pa.Table:
    """All committed parts under ``prefix`` as one table, or those ``columns`` of it (empty with ``schema`` when
    there are none). A part that is not Parquet or lacks a column of ``schema`` (but those of ``LATER_COLUMNS``,
    read as null) or has it of another type raises
    ValueError naming it, or, given ``unreadable``, is left out and that message appended to it; storage errors
    propagate."""
    import pyarrow.parquet as pq

    wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    tables = []
    for uri in storage.list(prefix, ".parquet"):
        with storage.open(uri) as f:
            part = pa.BufferReader(f.read())  # read first: what fails below is the part's content, not the storage
        try:
            found = {field.name: field.type for field in pq.read_schema(part)}
            wrong = [f"{c.name} ({found.get(c.name, 'missing')}, not {c.type})" for c in wanted
                     if found.get(c.name) != c.type and not (c.name not in found and c.name in LATER_COLUMNS)]
            if wrong:
                raise ValueError(f"column(s) not of the dataset contract: {'; '.join(wrong)}")
            tables.append(pq.read_table(part, columns=columns, schema=schema))
        except (pa.ArrowException, OSError, ValueError) as e:
            message = (f"{uri}: not a part of this dataset's schema ({e}); move it out of the folder, or read the "
                       "dataset with the program and version that wrote it")
            if unreadable is None:
                raise ValueError(message) from None
            unreadable.append(message)
    if tables:
        return pa.concat_tables(tables)
    return wanted.empty_table()


def read_manifest(storage: Storage, root: str, columns: list[str] | None = None) -> pa.Table:
    """The committed manifest of a dataset root, or those columns of it."""
    return read_parquet_dir(storage, storage.join(root, MANIFEST_DIR), MANIFEST_SCHEMA, columns)


def read_errors(storage: Storage, root: str) -> pa.Table:
    """The errors recorded against sources and clips (``ERRORS_SCHEMA``)."""
    return read_parquet_dir(storage, storage.join(root, ERRORS_DIR), ERRORS_SCHEMA)


def done_marker_uri(storage: Storage, root: str, source_uri: str) -> str:
    """Where the marker of a source whose clips are all accounted for lives: named after its URI."""
    return storage.join(root, DONE_DIR, hashlib.sha1(source_uri.encode()).hexdigest()[:24] + ".json")


def read_done_markers(storage: Storage, root: str) -> list[dict]:
    """The done markers of a dataset root: ``uri``, ``status`` ("ok" or "error") and what the source gave."""
    return [json.loads(storage.read_bytes(u)) for u in storage.list(storage.join(root, DONE_DIR), ".json")]


SUBJECT = pa.struct(
    [
        ("label", pa.string()),
        ("score", pa.float32()),
        ("bbox", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 in clip pixels
        ("frame", pa.int32()),
        ("mask_rle", pa.string()),  # COCO-style RLE counts, column-major, as a JSON string {"size":[h,w],"counts":[...]}
        ("area", pa.int64()),
    ]
)

# Subject ``k`` of a clip followed through the frames the subjects stage looked at (curation.models.tracking): one
# point per frame it was found in, with what its reference crops are chosen by.
TRACK_POINT = pa.struct(
    [
        ("frame", pa.int32()),  # clip frame index
        ("bbox", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 in clip pixels
        ("area", pa.int64()),  # mask pixels
        ("border_cut", pa.float32()),  # share of the mask's outline that lies on the frame border (cut off by it)
        ("sharpness", pa.float32()),  # variance of the Laplacian of the gray levels inside the mask
        ("occluded", pa.float32()),  # share of its box covered by other subjects' masks in that frame
        ("score", pa.float32()),  # detector score
    ]
)
REFERENCE = pa.struct(
    [
        ("frame", pa.int32()),  # clip frame index (its scores: the track point of that frame)
        ("member", pa.string()),  # the sample's member holding the RGBA crop (reference_member)
        ("quality", pa.float32()),  # 0..1, what it was chosen by (curation.models.references)
        ("in_window", pa.bool_()),  # inside the frames the default trainer's window takes
    ]
)
# Index-aligned with ``subjects``.
SUBJECT_TRACK = pa.struct(
    [
        ("track", pa.list_(TRACK_POINT)),
        ("references", pa.list_(REFERENCE)),
        ("embedding", pa.string()),  # base64 of the mean image embedding of its reference crops (float16, LE)
    ]
)
# Every subject label the caption named: "grounded" (subject ``subject``, with a reference), "not_found" (no
# detection passed the rules), or "dropped:<reason>" (found, then dropped: no_reference, cap).
LABEL = pa.struct([("label", pa.string()), ("status", pa.string()), ("subject", pa.int32())])
# Where each subject crop lies in the clip's shard (data bytes of its tar member), for reading one crop by range.
MEMBER_OFFSET = pa.struct([("member", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])

# Manifest columns added after datasets were written with the contract: a part without them reads them as null.
LATER_COLUMNS = frozenset({"stream_index", "video_streams", "color_primaries", "color_transfer", "bit_depth",
                           "text_area", "text_frames", "fingerprint", "embedding", "subject_tracks",
                           "subject_grounding", "member_offsets"})

MANIFEST_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("source_uri", pa.string()),
        ("source_sha1", pa.string()),
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),  # exclusive
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_frames", pa.int32()),
        ("motion", pa.float32()),
        ("blank_frac", pa.float32()),  # share of black, white or flat frames inside the clip
        ("luma", pa.float32()),  # mean gray level, 0..255
        ("contrast", pa.float32()),  # mean standard deviation of the gray levels
        ("damaged_frames", pa.int32()),  # frames the decoder reported damaged (filters.max_damaged_frames)
        # The source as read: the video stream the clip is cut from, of how many (attached pictures not counted),
        # and its colour as tagged (FFmpeg's names); every clip is encoded as 8-bit SDR BT.709 whatever it was.
        ("stream_index", pa.int32()),
        ("video_streams", pa.int32()),
        ("color_primaries", pa.string()),  # bt709, bt2020, ..., unspecified
        ("color_transfer", pa.string()),  # bt709, smpte2084 (PQ), arib-std-b67 (HLG), ..., unspecified
        ("bit_depth", pa.int32()),
        # Burned-in text (curation.stages.text): the share of the frame covered by text boxes, in the frame with the
        # most, and how many of the frames looked at show any.
        ("text_area", pa.float32()),
        ("text_frames", pa.int32()),
        # Near-duplicate signals (curation.dedup.signals): the hex of 64-bit DCT sign hashes of frames spread over the
        # clip, and base64 of the mean CLIP image embedding of the frames the aesthetic stage scored (float16, LE).
        ("fingerprint", pa.string()),
        ("embedding", pa.string()),
        ("aesthetic", pa.float32()),
        ("caption", pa.string()),
        ("subjects", pa.list_(SUBJECT)),
        ("num_subjects_dropped", pa.int32()),
        ("subject_tracks", pa.list_(SUBJECT_TRACK)),
        ("subject_grounding", pa.list_(LABEL)),
        ("shard", pa.string()),
        ("member_offsets", pa.list_(MEMBER_OFFSET)),  # set when the shard is written: not in the sample's JSON
        ("pipeline_version", pa.string()),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("clip_id", pa.string()),  # null for an error of the whole source
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


# One row per clip of the manifest the dedup job read (``DEDUP_DIR``/``DEDUP_FILE``).
DEDUP_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("group", pa.string()),  # the clip its near-duplicate group keeps; null: no near duplicate found
        ("kept", pa.bool_()),  # false: a near duplicate of the kept clip, left out of training by default
        # Per signal: the most similar clip it was compared with, and that similarity (null: the clip has no such
        # signal, or met no other clip).
        ("fingerprint_nearest", pa.string()),
        ("fingerprint_similarity", pa.float32()),
        ("embedding_nearest", pa.string()),
        ("embedding_similarity", pa.float32()),
    ]
)


# One row per subject of a clip that the identities job matched with subjects of other clips of its source.
OTHER_REFERENCE = pa.struct(
    [
        ("clip_id", pa.string()),
        ("subject", pa.int32()),  # index in that clip's ``subjects``
        ("member", pa.string()),  # its crop: reference_member, or subject_member when it has no other reference
        ("shard", pa.string()),  # that clip's shard name, and the member's data bytes in it
        ("offset", pa.int64()),
        ("size", pa.int64()),
        ("similarity", pa.float32()),  # cosine of the two subjects' embeddings
    ]
)
IDENTITY_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("subject", pa.int32()),
        ("identity", pa.string()),  # shared by every subject matched to it, directly or through others
        ("others", pa.list_(OTHER_REFERENCE)),  # its references from other clips of the source, most similar first
    ]
)


def _read_record(storage: Storage, root: str, folder: str, name: str, schema: pa.Schema, what: str,
                 job: str) -> pa.Table | None:
    import pyarrow.parquet as pq

    uri = storage.join(root, folder, name)
    try:
        with storage.open(uri) as f:
            data = pa.BufferReader(f.read())
    except FileNotFoundError:
        return None
    try:
        table = pq.read_table(data)
        if not table.schema.equals(schema):
            raise ValueError(f"columns {table.schema.names}, not those of the dataset contract")
    except (pa.ArrowException, ValueError) as e:
        raise ValueError(f"{uri}: not a {what} record of this contract ({e}); run `python -m curation {job}` on the "
                         "dataset again") from None
    return table


def read_dedup(storage: Storage, root: str) -> pa.Table | None:
    """The near-duplicate record of a dataset root, or None when the dedup job has not run on it; ValueError
    naming the file when it is not of ``DEDUP_SCHEMA``."""
    return _read_record(storage, root, DEDUP_DIR, DEDUP_FILE, DEDUP_SCHEMA, "near-duplicate", "dedup")


def read_identities(storage: Storage, root: str) -> pa.Table | None:
    """The subject identity record of a dataset root (``IDENTITY_SCHEMA``), or None when the identities job has not
    run on it; ValueError naming the file when it is not of this contract."""
    return _read_record(storage, root, IDENTITY_DIR, IDENTITY_FILE, IDENTITY_SCHEMA, "subject identity",
                        "identities")


def removed_clips(storage: Storage, root: str) -> frozenset[str]:
    """The clip ids the dedup record of a root removes (none when it has no record)."""
    table = read_dedup(storage, root)
    if table is None:
        return frozenset()
    kept = table.column("kept").to_pylist()
    return frozenset(c for c, k in zip(table.column("clip_id").to_pylist(), kept) if not k)


def manifest_row(meta: dict, shard: str) -> dict:
    """The manifest row of a clip from its metadata: every schema column, missing ones as null."""
    row = {name: meta.get(name) for name in MANIFEST_SCHEMA.names}
    row["subjects"] = meta.get("subjects") or []
    row["num_subjects_dropped"] = meta.get("num_subjects_dropped") or 0
    row["shard"] = shard
    row["pipeline_version"] = PIPELINE_VERSION
    return row
