"""What a run tells its user: the progress line, and an exit code that says whether the job did its work."""

from collections import Counter

from curation.__main__ import _verdict
from curation.run.progress import progress_line
from curation.run.runner import RunResult
from curation.sink.writer import RunStats


def stats(**kw) -> RunStats:
    s = RunStats()
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_progress_says_sources_done_of_total_rate_eta_and_stages_in_pipeline_order():
    s = stats(sources_done=2, sources_failed=1, clips_written=14, dropped=Counter(motion=2, blank=1), errors=Counter(VideoError=1))
    counts = {"encode": [5, 5, 0, 1.0], "caption_prep": [4, 4, 0, 0.1], "scenes": [3, 9, 1, 5.0]}
    line = progress_line(30.0, 10, s, counts, ["scenes", "encode", "caption_prep"])
    assert line == "[    30s] sources 3/10 (0.10/s, ETA 70s) | clips 14 written, 3 dropped | errors 1 | scenes 3 | encode 5 | caption_prep 4"
    assert "ETA ?" in progress_line(2.0, 10, RunStats(), {}, ["scenes"])  # the first line, before anything is done


def result(s: RunStats) -> RunResult:
    return RunResult(10, 0, s, 1.0, {})


def test_a_job_that_wrote_nothing_or_failed_too_often_exits_non_zero():
    ok = {"a": {"status": "ok"}, "b": {"status": "ok"}, "c": {"status": "error"}}
    assert _verdict(result(stats(sources_done=2, sources_failed=1, clips_written=5, sources=ok)), 0.5) == 0
    assert _verdict(result(stats(sources_done=2, sources_failed=1, clips_written=5, sources=ok)), 0.2) == 1
    assert _verdict(result(stats(sources_done=3, sources=dict(ok, c={"status": "ok"}))), 0.5) == 1  # no clip written
    assert _verdict(result(stats(sources_done=2, clips_written=5, environment=["scenes on x: refused"])), 0.5) == 3


def test_a_training_run_records_its_config_and_groups_its_tensorboard_scalars(tmp_path):
    import torch
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.metrics import Metrics

    config = {"steps": 3, "optim": {"lr": 1e-4, "betas": [0.9, 0.95]}, "data": {"urls": ["s3://b/d"], "endpoint_url": None}}
    m = Metrics(tmp_path, 1, 0, 1, torch.device("cpu"), True, config)
    m.step(1, 0.5, 2, 100, 1e9, 0.01, {"lr": 1e-4, "data_skipped": 1, "data_retries": 0, "grad_norm": 2.0})
    m.close()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/grad_norm", "optim/lr", "data/skipped", "data/retries", "perf/samples_per_s", "perf/step_s"} <= tags
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"optim.lr" in start and b"data.urls" in start  # the run's hyper-parameters, in its own event file
