"""CPU filters on scores computed during scene detection, applied before encoding so rejects cost nothing."""

from __future__ import annotations

from ..config import FiltersConfig, JobConfig
from .base import Row, Stage, make_row


def rejection(meta: dict, f: FiltersConfig) -> str | None:
    """Why a clip is rejected, or None to keep it. The scene pass asks too, so it never encodes a reject."""
    if meta["width"] < f.min_width or meta["height"] < f.min_height:
        return "resolution"
    if meta["motion"] < f.min_motion or (f.max_motion is not None and meta["motion"] > f.max_motion):
        return "motion"
    if meta["blank_frac"] > f.max_blank_frac:
        return "blank"
    if f.max_damaged_frames is not None and meta["damaged_frames"] > f.max_damaged_frames:
        return "damaged"
    return None


class FilterStage(Stage):
    name = "filter"
    num_cpus = 0.25

    def __init__(self, cfg: JobConfig):
        self.f = cfg.filters

    def process(self, row: Row) -> list[Row]:
        why = rejection(row["meta"], self.f)
        if why is None:
            return [row]
        return [make_row("dropped", row["source_uri"], {**row["meta"], "dropped_by": why})]
