"""Hugging Face datasets reads the output through its dataset card: every member typed, shards with and without
subject crops mixed, a column no clip has filled (aesthetic) still float."""

import io

import av
import pytest

from common import contract as C
from common.storage import Storage
from curation.tools.card import CARD_FILE, write_card
from curation.tools.inspection import dataset_stats

from .data_fixtures import Clip, write_dataset

datasets = pytest.importorskip("datasets")
huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "ds"
    # The first shard has no subject crops at all, the second mixes 0 to 3 per clip.
    clips = [Clip(f"plain-{i}", 32, 32, caption=f"plain {i}") for i in range(3)]
    clips += [Clip(f"subj-{i}", 48, 32, num_subjects=i, caption=f"with {i}") for i in range(4)]
    write_dataset(out, clips, clips_per_shard=3)
    write_card(str(out), Storage(), dataset_stats(str(out), Storage()))
    return out, {c.clip_id: c for c in clips}


def _check(ds, clips):
    assert isinstance(ds.features["mp4"], datasets.Video) and isinstance(ds.features["subject_5.png"], datasets.Image)
    assert ds.features["json"]["aesthetic"].dtype == "float32"
    assert ds.features["json"]["subjects"].feature["bbox"].length == 4  # a fixed-size list
    assert sorted(ds["__key__"]) == sorted(clips)
    ds = ds.cast_column("mp4", datasets.Video(decode=False))  # the bytes; decoding would need torchcodec
    for row in ds:
        c = clips[row["__key__"]]
        assert row["json"]["clip_id"] == c.clip_id and row["json"]["aesthetic"] is None
        assert row["caption.txt"] == c.caption
        for k in range(C.MAX_SUBJECTS):
            crop = row[C.subject_member(k)]
            assert (crop is not None) == (k < c.num_subjects)
            assert crop is None or crop.mode == "RGBA"
        with av.open(io.BytesIO(row["mp4"]["bytes"])) as v:
            assert sum(1 for _ in v.decode(video=0)) == c.num_frames


def test_load_dataset_reads_the_folder_with_the_card_types(carded, tmp_path):
    out, clips = carded
    _check(datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache")), clips)


def test_webdataset_loader_with_the_card_features(carded, tmp_path):
    out, clips = carded
    card = huggingface_hub.DatasetCard.load(out / CARD_FILE)
    features = datasets.Features._from_yaml_list(card.data["dataset_info"]["features"])
    ds = datasets.load_dataset("webdataset", data_files=str(out / "shards" / "*.tar"), features=features,
                               split="train", cache_dir=str(tmp_path / "cache"))
    _check(ds, clips)
