"""The dataset card (README.md at the output's root) for Hugging Face ``datasets`` and the Hub.

Its YAML header declares every WebDataset member's type. ``datasets`` would otherwise infer the types from the
first few samples of the first shard, and fail on shards whose samples differ in members (clips with and without
subject crops) or guess ``null`` for a column that no clip has filled yet (``aesthetic`` when it is disabled).
"""

from __future__ import annotations

import pyarrow as pa
import yaml

from common import contract as C
from common.storage import Storage

CARD_FILE = "README.md"
_DTYPES = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float32(): "float32",
           pa.float64(): "float64", pa.bool_(): "bool"}


def _feature(t: pa.DataType) -> dict:
    """A ``datasets`` feature in its YAML form (``Features._to_yaml_list``), without the name."""
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **_feature(f.type)} for f in t]}
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        inner = _feature(t.value_type)
        out = {"list": inner.get("dtype", inner.get("struct"))}
        return out | ({"length": t.list_size} if pa.types.is_fixed_size_list(t) else {})
    return {"dtype": _DTYPES[t]}


def features() -> list[dict]:
    """Every member a sample may have, plus the loader's ``__key__`` and ``__url__``."""
    return [
        {"name": C.MP4, "dtype": "video"},
        {"name": C.JSON, **_feature(pa.struct(list(C.MANIFEST_SCHEMA)))},
        {"name": C.CAPTION, "dtype": "string"},
        *({"name": C.subject_member(k), "dtype": "image"} for k in range(C.MAX_SUBJECTS)),
        *({"name": C.reference_member(k, r), "dtype": "image"}
          for k in range(C.MAX_SUBJECTS) for r in range(C.MAX_REFERENCES)),
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
    ]


def card_text(stats: dict) -> str:
    """The card of a dataset from its ``curation.tools.inspection.dataset_stats``."""
    clips, hours, nd = stats["clips"], stats["hours"], stats["near_duplicates"]
    near = "" if nd is None else (
        f"\n{nd['removed']} of the clips are near duplicates of another clip (`{C.DEDUP_DIR}/{C.DEDUP_FILE}`: `kept` is "
        "false, `group` names the clip kept in their place). The project's trainer leaves them out; the shards still "
        f"hold them, so a loader that reads the shards directly should filter by that file ({nd['clips_kept']} clips, "
        f"{nd['hours_kept']:.3f} h remain).\n")
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{C.SHARDS_DIR}/*.tar"}]}],
        "dataset_info": {"features": features()},
        "tags": ["video", "webdataset"],
    }
    members = "\n".join(f"| `{m}` | {d} |" for m, d in [
        (C.MP4, "the clip, H.264 (`video`: decoded with `torchcodec`; `cast_column(\"mp4\", Video(decode=False))` gives the bytes)"),
        (C.JSON, "the clip's manifest row: source, frame range, scores (`motion`, `blank_frac`, `luma`, `contrast`, `aesthetic`), subjects"),
        (C.CAPTION, "the caption (null when not captioned)"),
        ("subject_0.png ... subject_5.png", "RGBA subject crops from the keyframe, background removed (`image`; null when the clip has fewer)"),
        ("subject_k_ref0.png ... subject_k_ref3.png", "subject k's reference crops from other frames of the clip, best first, outside the frames trained on first (`image`; null when it has fewer)"),
    ])
    return f"""---
{yaml.safe_dump(header, sort_keys=False)}---
# Curated video clips

{clips} clips ({hours:.3f} h) in WebDataset shards under `{C.SHARDS_DIR}/`, one sample per clip; the same rows as
Parquet under `{C.MANIFEST_DIR}/`, per-source errors under `{C.ERRORS_DIR}/`. Made by `python -m curation`
(pipeline {C.PIPELINE_VERSION}).
{near}
| member | content |
|---|---|
{members}

```python
import datasets, huggingface_hub
ds = datasets.load_dataset("path/to/this/folder", split="train")  # types from this card
# or any copy of the shards (local, s3://, https://), with the card's types:
card = huggingface_hub.DatasetCard.load("path/to/this/folder/README.md")
features = datasets.Features._from_yaml_list(card.data["dataset_info"]["features"])
ds = datasets.load_dataset("webdataset", data_files="path/to/shards/*.tar", features=features, split="train")
```
"""


def write_card(output: str, storage: Storage, stats: dict) -> str:
    uri = storage.join(output, CARD_FILE)
    storage.write_atomic(uri, card_text(stats).encode())
    return uri
