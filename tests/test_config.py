import pytest

from common.typed_config import ConfigError
from curation.config import load_job
from training.config import load_train_job


def write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return str(p)


def test_job_file_and_overrides(tmp_path):
    job = write(tmp_path, "input: a\noutput: b\nscenes:\n  max_clip_s: 8\n")
    cfg = load_job(job, ["scenes.min_clip_s=15e-1", "encode.crf=30", "scenes.detectors=[{kind: threshold, args: {fade_bias: 0.2}}]"])
    assert (cfg.scenes.max_clip_s, cfg.scenes.min_clip_s, cfg.encode.crf) == (8.0, 1.5, 30)
    assert cfg.scenes.detectors[0].kind == "threshold" and cfg.scenes.detectors[0].args == {"fade_bias": 0.2}
    assert load_job(job, [], input="x", output="s3://b/p").output == "s3://b/p"
    # A whole number stays a whole number: PySceneDetect reads min_scene_len=15.0 as 15 seconds, 15 as 15 frames.
    args = load_job(job, ["scenes.detectors=[{kind: adaptive, args: {min_scene_len: 15}}]"]).scenes.detectors[0].args
    assert type(args["min_scene_len"]) is int


@pytest.mark.parametrize(
    "text, overrides, names",
    [
        ("input: a\noutput: b\nscenes:\n  max_clip: 3\n", [], "scenes.max_clip"),
        ("input: a\noutput: b\n", ["encode.crf=high"], "encode.crf"),
        ("input: a\noutput: b\n", ["scenes.min_clip_s=short"], "scenes.min_clip_s"),
        ("input: a\noutput: b\n", ["scenes.detectors=[{kind: magic}]"], "scenes.detectors[0].kind"),
        ("input: a\noutput: b\n", ["encode.crf=99"], "encode.crf"),
        ("input: a\n", [], "output"),
        ("input: a\noutput: b\nshards: 5\n", [], "shards"),
    ],
)
def test_wrong_key_or_value_is_one_clear_error(tmp_path, text, overrides, names):
    with pytest.raises(ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        load_job(write(tmp_path, text), overrides)


def test_training_job_sections_and_overrides():
    job = load_train_job(None, ["optim.lr=1e-3", "optim.betas=[0.9, 0.95]", "data.urls=[s3://b/ds]", "stage=aligner"])
    assert (job.optim.lr, job.optim.betas, job.data.urls, job.stage) == (1e-3, (0.9, 0.95), ["s3://b/ds"], "aligner")
    with pytest.raises(ConfigError, match="optim.ema_decay"):
        load_train_job(None, ["optim.ema_decay=2"])
    with pytest.raises(ConfigError, match="stage"):
        load_train_job(None, ["stage=pretrain"])


@pytest.mark.parametrize("override, field", [
    ("optim.lr=.nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"), ("optim.grad_clip=-.inf", "optim.grad_clip"),
    ("optim.warmup_steps=true", "optim.warmup_steps"),
])
def test_training_numbers_refuse_nan_infinities_and_bools(override, field):
    # Before: NaN passed `lr <= 0` and every step's update was NaN.
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_train_job(None, [override])
