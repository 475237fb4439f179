"""report.html of a small job, looked at for its content; a source with only too-short scenes is accounted for."""

import re
from pathlib import Path

from common import contract as C
from common.storage import Storage
from curation.config import ShardsConfig, load_job
from curation.pipeline.row import Row
from curation.sink.writer import DatasetWriter
from curation.tools.report import summary_text, write_report

from .data_fixtures import clip_row, standard_clips
from .pipeline_helpers import manifest, send


def test_report_of_the_small_job(curated):
    cfg, result, _ = curated
    s = result.stats
    result_rows = {r["clip_id"]: r for r in manifest(cfg.output).to_pylist()}
    uri = write_report(cfg, Storage(), s, summary_text(s, result.seconds, 12, 0, 2), result.stage_counts, result.seconds)
    page = Path(uri).read_text()
    # Every filter, with its threshold from the job config and its pass rate.
    for rule in ("scenes.min_clip_s = 0.5 s", "filters.max_blank_frac = 0.05", "filters.min_motion = 0",
                 "filters.min_width = 0", "aesthetic.min_score not set"):
        assert rule in page
    assert page.count("<tr><td><b>") >= 5 and re.search(r"<td>\d+(\.\d)?%</td>", page)
    # Time and throughput per stage, in pipeline order.
    section = page[page.index("<h2>Stages"):page.index("<h2>Errors")]
    stages = re.findall(r"<tr><td>(\w+)</td><td>\d+</td>", section)
    assert stages == ["scenes", "encode", "text", "caption_prep", "aesthetic", "caption", "subjects"]
    # Errors grouped by stage and type with counts and the first messages.
    assert re.search(r"<td>scenes</td><td>VideoError</td><td>\d+</td>", page) and "file not found" in page
    assert "1.000 bytes read from storage per source byte" in page  # the summary's
    # One card per sample clip: frames, scores, caption, crops on a checkerboard with their labels.
    assert page.count("class='card'") == len(s.samples) > 0
    # each subject's keyframe crop, then its references from other frames
    crops = sum(len(C.png_members(result_rows[clip_id])) for clip_id, _ in s.samples)
    refs = sum(len(t["references"]) for clip_id, _ in s.samples for t in result_rows[clip_id]["subject_tracks"])
    assert page.count('class="alpha"') == crops > refs > 0 and page.count("ref: frame") == refs
    # every caption label: grounded or why not, with examples
    assert "<h2>Subjects</h2>" in page and "Caption labels: grounded or not" in page
    assert "motion " in page and "A person" in page
    assert page.count("data:image/png;base64") >= 5 + crops  # histograms + crops
    assert (Path(cfg.output) / "contact_sheet.png").stat().st_size > 10_000
    assert (Path(cfg.output) / "README.md").read_text().startswith("---\nconfigs:")


def test_a_source_whose_scenes_are_all_too_short_is_reported(tmp_path):
    out = tmp_path / "out"
    writer = DatasetWriter(str(out), Storage(), ShardsConfig())
    writer.recover()
    kept = clip_row(standard_clips()[1])
    send(writer, [kept, Row("summary", kept.source_uri,
                            {"num_clips": 1, "num_scenes": 1, "duration_s": 1.0, "source_sha1": "0" * 40})])
    short = "/videos/short_scene.mp4"
    writer.add(Row("summary", short, {"num_clips": 0, "num_scenes": 1, "num_short_scenes": 1, "duration_s": 0.9,
                                      "source_sha1": "1" * 40}))
    writer.close()
    assert writer.stats.dropped == {"too_short": 1}
    assert writer.stats.rejected["too_short"][0]["source_uri"] == short
    cfg = load_job(None, ["scenes.min_clip_s=2"], input="unused", output=str(out))
    page = Path(write_report(cfg, Storage(), writer.stats, "summary", {}, 1.0)).read_text()
    assert re.search(r"<td>/videos/short_scene.mp4</td><td>0</td><td>no scene as long as the shortest clip \(scenes.min_clip_s", page)
    assert re.search(r"<b>too_short</b></td><td>a scene shorter than scenes.min_clip_s = 2 s makes no candidate clip", page)
    assert "short_scene.mp4 (0.90 s): 1 short scene(s)" in page
