"""The validation split: whole sources held out, chosen by a hash of their content id (``source_sha1``), so the
split is the same on every rank and run, a source keeps its side as the dataset grows, and every copy of a source
falls on the same side: no clip of a validation source is ever trained on."""

from __future__ import annotations

import hashlib

from common import contract as C
from common.shard_reader import RawSample, parse_json


def held_out_source(source_sha1: str, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.sha1(f"validation/{source_sha1}".encode()).hexdigest()
    return int(digest[:13], 16) < fraction * 16**13


def held_out(raw: RawSample, fraction: float) -> bool:
    """Whether the sample's source is held out; a sample without a readable source id is trained on (its decode
    reports a broken JSON member)."""
    if fraction <= 0 or C.JSON not in raw.members:
        return False
    try:
        sha = parse_json(raw.members[C.JSON]).get("source_sha1")
    except ValueError:
        return False
    return isinstance(sha, str) and held_out_source(sha, fraction)
