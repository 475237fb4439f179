"""The per-worker sample stream: shards split over (rank, worker) slots, a shuffle buffer, bucketed batches,
and a position that can be saved and restored exactly.

Everything a slot yields is a function of (seed, shard list, slot, number of slots) and its saved state, so a
resumed run yields the same batches as one that never stopped. The stream never ends (epochs repeat; the
trainer counts steps), so no rank runs out of data before another.

A run resumed with another number of slots (world size x loader workers) takes over from every old slot's state
(``handover``): it starts at the oldest epoch any old slot was in, reads the new slots' plans of that epoch and the
next, and skips every sample an old slot's cursor had passed in the same epoch (``history``); the samples the old
slots had read but not yet batched (shuffle buffers, part-filled buckets) are dealt to the new slots. So no sample
is trained twice in an epoch across the change and none is lost; only the order differs from the old world's.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from torch.utils.data import IterableDataset, get_worker_info

from common import contract as C
from common.shard_reader import RawSample, ShardCorrupt, iter_samples
from common.storage import Storage

from ..config import DataConfig, JobError
from .decode import DECODE_ERRORS, Sample, TooShort, collate, decode_sample, media_field
from .features import FIELDS as FEATURE_FIELDS
from .features import FeatureSample, collate_features, decode_features
from .identities import OtherClips
from .near_duplicates import removed as near_duplicates
from .split import held_out

log = logging.getLogger("training.data")

# A slot whose samples all fail to decode would otherwise spin for ever while its rank waits in a collective.
MAX_FAILURES_IN_ROW = 1000

COUNTERS = ("samples_read", "samples_yielded", "samples_corrupt", "samples_too_short", "samples_held_out",
            "samples_near_duplicate",
            "members_rejected", "shards_corrupt", "shards_failed", "read_retries", "epochs",
            # the subject crops of the samples yielded, by where they came from (data.subject_references)
            "references_same_clip", "references_other_frames", "references_other_clip", "references_unreadable")


def plan_epoch(num_shards: int, epoch: int, seed: int, slot: int, num_slots: int) -> list[tuple[int, int, int]]:
    """(shard, stride, phase) triples slot ``slot`` reads in ``epoch``: it takes the samples of ``shard`` whose
    number is ``phase`` modulo ``stride``. Over all slots every sample is read exactly once per epoch.

    With at least as many shards as slots, each slot takes whole shards. With fewer, the slots are spread over the
    shards and the slots on one shard take every n-th sample of it, so every slot has data and no rank starves;
    each shard is then read by about num_slots / num_shards slots, not by all of them."""
    order = list(range(num_shards))
    random.Random(f"{seed}/epoch/{epoch}").shuffle(order)
    if num_shards >= num_slots:
        return [(s, 1, 0) for s in order[slot::num_slots]]
    sharing = range(slot % num_shards, num_slots, num_shards)
    return [(order[slot % num_shards], len(sharing), slot // num_shards)]


CHANGED_DATASET = ("the data position in the checkpoint is of another shard list: the dataset changed since. Resume "
                   "with checkpoint.exclude_from_loading=[data] to start its stream afresh")


def shard_digest(shards: list[str]) -> int:
    return zlib.crc32("\n".join(shards).encode())


@dataclass
class HeldSample(RawSample):
    """A sample a slot holds (in its shuffle buffer) with the epoch it was read in: what its subject references are
    drawn by, so that they do not depend on when it is decoded."""

    epoch: int = 0


def held_samples(state: dict) -> list[tuple[list[int], int]]:
    """(position, epoch read in) of every sample a slot's saved state holds: its shuffle buffer's, then those of its
    part-filled buckets. A state saved before the epochs were kept gives each the cursor's epoch."""
    positions = [*state["buffer"], *(p for bucket in state["pending"] for p in bucket)]
    return list(zip(positions, state.get("held_epochs", [state["epoch"]] * len(positions))))


class ShardStream(IterableDataset):
    """Yields batch dicts (see ``collate``) plus ``slot`` and ``counters`` (this worker's, as of this batch).

    State: the read cursor (epoch, shard of the epoch's plan, byte offset and sample number in it), the shuffle
    RNG, and the positions of the samples held in the shuffle buffer and in part-filled buckets (and the epoch each
    was read in), which are re-read and decoded on restore; never decoded tensors.
    """

    def __init__(self, cfg: DataConfig, shards: list[str], rank: int, world_size: int, media: bool = True,
                 handover: list[dict] | None = None, features: bool = False, holdout: float = 0.0,
                 removed: frozenset[str] | None = None, others: OtherClips | None = None):
        """``media=False`` reads captions and metadata only; ``handover`` is every slot's state of a run with
        another number of slots, in slot order (module docstring); ``features=True``: ``shards`` are the
        features tars of the run's shards (``training.data.features``), read in their place, nothing decoded;
        ``holdout``: the share of sources held out for validation (``split.held_out``), never yielded; near
        duplicates (``near_duplicates.removed``; given, or read from the shards' dataset roots) are never yielded
        either; ``others``: the subjects' crops in other clips (given, or read from the shards' dataset roots)."""
        self.cfg, self.shards, self.rank, self.world_size, self.media = cfg, shards, rank, world_size, media
        self.features, self.holdout = features, holdout
        self.removed = near_duplicates(cfg, shards) if removed is None else removed
        self.others = OtherClips(cfg, shards, media and not features) if others is None else others
        self.storage = Storage(cfg.storage)
        self.handover = handover
        self._reset()

    def _reset(self) -> None:
        self.epoch, self.plan_pos, self.offset, self.index, self.read_in_epoch = 0, 0, 0, 0, 0
        self.rng: random.Random | None = None  # seeded per slot once the slot is known
        self.buffer: list[HeldSample] = []
        # Per bucket: (position, epoch read in, decoded sample) of each sample until the batch is full.
        self.pending: list[list[tuple[list[int], int, Sample]]] = [[] for _ in range(self.cfg.num_buckets)]
        self.counters = Counter({name: 0 for name in COUNTERS})
        self._warned: set[tuple[str, str | None]] = set()
        self._failures_in_row = 0
        # Cursors of earlier worlds (num_slots, [epoch, plan_pos, index] per slot) while their epochs last, and
        # the samples they had read in the current epoch: shard -> (cursor, plan position, stride, phase).
        self.history: list[dict] = []
        self._read_before_epoch: int | None = None
        self._read_before_table: dict[int, list] = {}

    # -- slots ----------------------------------------------------------------------------------------------
    def slot(self) -> tuple[int, int]:
        """(slot, number of slots): this worker's place among all loader workers of all ranks."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers

    def _rng(self) -> random.Random:
        if self.rng is None:
            self.rng = random.Random(f"{self.cfg.seed}/shuffle/{self.slot()[0]}")
        return self.rng

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain ints, lists and dicts (JSON-serialisable)."""
        self._take_over()
        slot, num_slots = self.slot()
        return {
            "slot": slot, "num_slots": num_slots, "shards": shard_digest(self.shards),
            "epoch": self.epoch, "plan_pos": self.plan_pos, "offset": self.offset, "index": self.index,
            "read_in_epoch": self.read_in_epoch,
            "rng": list(self._rng().getstate()[1]),
            "buffer": [s.position for s in self.buffer],
            "pending": [[pos for pos, _, _ in bucket] for bucket in self.pending],
            "held_epochs": [*(s.epoch for s in self.buffer), *(e for bucket in self.pending for _, e, _ in bucket)],
            "counters": dict(self.counters),
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        slot, num_slots = self.slot()
        if (state["slot"], state["num_slots"]) != (slot, num_slots):
            raise ValueError(f"loader state is of slot {state['slot']} of {state['num_slots']}, this worker is slot "
                             f"{slot} of {num_slots}: world size and num_workers must match the saved run")
        if state["shards"] != shard_digest(self.shards):
            raise JobError(CHANGED_DATASET)
        # The buffered samples are re-read from their positions and the part-filled buckets decoded again.
        self._reset()
        self.epoch, self.plan_pos, self.read_in_epoch = state["epoch"], state["plan_pos"], state["read_in_epoch"]
        self.offset, self.index = state["offset"], state["index"]
        self._rng().setstate((3, tuple(state["rng"]), None))
        self.counters.update(state["counters"])
        self.history = state["history"]
        held = held_samples(state)
        self.buffer = self._read_held(held[:len(state["buffer"])])
        for raw in self._read_held(held[len(state["buffer"]):]):
            sample = self.decode(raw, raw.epoch)
            if sample is not None:  # into the bucket it decodes to now (the bucket list may have changed)
                self.pending[sample.bucket].append((raw.position, raw.epoch, sample))

    def _take_over(self) -> None:
        """Start from the old slots' states of ``handover`` (module docstring), once."""
        if self.handover is None:
            return
        old, self.handover = self.handover, None
        slot, num_slots = self.slot()
        cursors = [[s["epoch"], s["plan_pos"], s["index"]] for s in old]
        oldest = min(range(len(old)), key=lambda i: cursors[i][0])  # its history is the least pruned
        self.history = [*old[oldest]["history"], {"num_slots": len(old), "cursors": cursors}]
        self.epoch = cursors[oldest][0]
        held = [h for s in old for h in held_samples(s)]
        self.buffer = self._read_held(held[slot::num_slots])
        if slot == 0:  # the old counts are carried once, so the totals over slots go on
            for s in old:
                self.counters.update(s["counters"])

    def _read_before(self, shard: int, index: int) -> bool:
        """Whether a world before a change of slot count already read sample ``index`` of ``shard`` in this
        epoch."""
        if self._read_before_epoch != self.epoch:
            self.history = [w for w in self.history if max(c[0] for c in w["cursors"]) >= self.epoch]
            self._read_before_table = {}
            for world in self.history:
                for old_slot, cursor in enumerate(world["cursors"]):
                    plan = plan_epoch(len(self.shards), self.epoch, self.cfg.seed, old_slot, world["num_slots"])
                    for pos, (s, stride, phase) in enumerate(plan):
                        self._read_before_table.setdefault(s, []).append((cursor, pos, stride, phase))
            self._read_before_epoch = self.epoch
        for (epoch, plan_pos, next_index), pos, stride, phase in self._read_before_table.get(shard, ()):
            if index % stride == phase and (epoch > self.epoch or epoch == self.epoch and (
                    pos < plan_pos or pos == plan_pos and index < next_index)):
                return True
        return False

    def _read_at(self, position: list[int]) -> RawSample | None:
        shard, offset, index = position
        samples = self._read_shard(shard, offset, index, 1, 0)
        found = next(samples, None)
        samples.close()
        # Not the next sample instead, if this one is now skipped (data.max_member_mb lowered since it was saved).
        return found[0] if found and found[0].offset == offset else None

    def _read_held(self, held: list[tuple[list[int], int]]) -> list[HeldSample]:
        """The samples of ``held_samples`` that can still be read."""
        found = ((self._read_at(pos), epoch) for pos, epoch in held)
        return [HeldSample(**vars(raw), epoch=epoch) for raw, epoch in found if raw is not None]

    # -- reading --------------------------------------------------------------------------------------------
    def _warn(self, url: str, key: str | None, message: str) -> None:
        if (url, key) not in self._warned:  # once per place, not again every epoch
            self._warned.add((url, key))
            log.warning("%s: %s", f"{url} [{key}]" if key else url, message)

    def _reject(self, url: str):
        def reject(name: str, why: str) -> None:
            self.counters["members_rejected"] += 1
            self._warn(url, name, f"member rejected: {why}")
        return reject

    def _read_shard(self, shard: int, offset: int, index: int, stride: int,
                    phase: int) -> Iterator[tuple[RawSample, int, int]]:
        """Samples of one shard from a position; read errors reopen at the last whole sample, with backoff,
        then give up on the shard. Yields (sample, next offset, next index) as iter_samples does."""
        url = self.shards[shard]
        max_member = int(self.cfg.max_member_mb * 1e6)
        failures = 0
        while True:
            try:
                with self.storage.open(url) as f:
                    for raw, offset, index in iter_samples(f, shard, offset, index, stride, phase, self._reject(url),
                                                           self._wanted, max_member=max_member):
                        failures = 0
                        yield raw, offset, index
                return
            except ShardCorrupt as e:
                self.counters["shards_corrupt"] += 1
                self._warn(url, None, f"corrupt or truncated shard, skipping the rest of it: {e}")
                return
            except FileNotFoundError:
                self.counters["shards_failed"] += 1
                self._warn(url, None, "shard not found, skipping it")
                return
            except OSError as e:
                failures += 1
                if failures > self.cfg.retries:
                    self.counters["shards_failed"] += 1
                    log.warning("%s: read failed %d times, skipping the rest of the shard: %s", url, failures, e)
                    return
                self.counters["read_retries"] += 1
                log.warning("%s: read error at byte %d, reopening (attempt %d of %d): %s",
                            url, offset, failures, self.cfg.retries, e)
                time.sleep(self.cfg.retry_backoff_s * 2 ** (failures - 1))

    def _wanted(self, field: str) -> bool:
        if self.features:
            return field in FEATURE_FIELDS
        return C.is_field(field) and (self.media or not media_field(field))

    def shard_samples(self, shard: int) -> Iterator[RawSample]:
        """Every sample of one shard once, in order, with the stream's retries and skips (``counters`` says
        whether the shard was read to its end: ``shards_failed`` and ``shards_corrupt`` do not grow then)."""
        for raw, _, _ in self._read_shard(shard, 0, 0, 1, 0):
            self.counters["samples_read"] += 1
            if raw.key in self.removed:
                self.counters["samples_near_duplicate"] += 1
                continue
            yield raw

    def raw_samples(self) -> Iterator[RawSample]:
        """This slot's samples, epoch after epoch, from the cursor; the cursor moves as each is yielded."""
        slot, num_slots = self.slot()
        # Shards read since this slot last gave a sample, all of its share of them held out for validation. A slot
        # takes the same share (stride, phase) of any shard it reads, so once that is every shard it never will.
        idle: set[int] = set()
        while True:
            plan = plan_epoch(len(self.shards), self.epoch, self.cfg.seed, slot, num_slots)
            while self.plan_pos < len(plan):
                shard, stride, phase = plan[self.plan_pos]
                given = held = False
                for raw, self.offset, self.index in self._read_shard(shard, self.offset, self.index, stride, phase):
                    self.read_in_epoch += 1
                    if self.history and self._read_before(shard, raw.index):
                        continue
                    self.counters["samples_read"] += 1
                    if raw.key in self.removed:
                        self.counters["samples_near_duplicate"] += 1
                        held = True  # like a held-out sample: this slot read its share of the shard
                        continue
                    if held_out(raw, self.holdout):
                        self.counters["samples_held_out"] += 1
                        held = True
                        continue
                    given = True
                    yield raw
                idle = set() if given else idle | {shard} if held else idle  # unread shards say nothing
                if len(idle) == len(self.shards):
                    raise JobError(f"rank {self.rank}, slot {slot}: every sample of its share of every shard is of a "
                                   "source held out for validation or a near duplicate: lower validation.fraction, "
                                   "or train with fewer ranks or loader workers than this dataset has shards")
                self.plan_pos, self.offset, self.index = self.plan_pos + 1, 0, 0
            if self.read_in_epoch == 0:
                urls = [self.shards[s] for s, _, _ in plan]
                raise JobError(f"rank {self.rank}, slot {slot}: no readable sample in a whole epoch of its "
                                   f"shards {urls[:3]}{'...' if len(urls) > 3 else ''}; see the warnings above")
            self.epoch, self.plan_pos, self.read_in_epoch = self.epoch + 1, 0, 0
            self.counters["epochs"] += 1

    # -- decoding and batching ------------------------------------------------------------------------------
    def decode(self, raw: RawSample, epoch: int = 0) -> Sample | FeatureSample | None:
        """The sample's tensors, its subject references drawn for ``epoch`` (the one it was read in; validation and
        precomputed features take epoch 0's), or None (counted, warned once) when it cannot be used."""
        try:
            sample = decode_features(raw, self.cfg) if self.features else \
                decode_sample(raw, self.cfg, self.media, epoch, self.others)
            self._failures_in_row = 0
            return sample
        except TooShort as e:
            self.counters["samples_too_short"] += 1
            self._warn(self.shards[raw.shard], raw.key, str(e))
        except DECODE_ERRORS as e:
            self.counters["samples_corrupt"] += 1
            self._warn(self.shards[raw.shard], raw.key, f"undecodable sample skipped: {type(e).__name__}: {e}")
        self._failures_in_row += 1
        if self._failures_in_row >= MAX_FAILURES_IN_ROW:
            c = self.counters
            raise JobError(f"rank {self.rank}, slot {self.slot()[0]}: {MAX_FAILURES_IN_ROW} samples in a row "
                           f"could not be used (so far {c['samples_too_short']} too short for the shortest window, "
                           f"{self.cfg.frames[0]} frames at {self.cfg.target_fps or 'every'} fps; "
                           f"{c['samples_corrupt']} undecodable); see the warnings above")
        return None

    def __iter__(self) -> Iterator[dict]:
        self._take_over()
        rng = self._rng()
        for raw in self.raw_samples():
            read = HeldSample(**vars(raw), epoch=self.epoch)
            if len(self.buffer) < self.cfg.shuffle_buffer:
                self.buffer.append(read)
                continue
            i = rng.randrange(len(self.buffer))
            out, self.buffer[i] = self.buffer[i], read
            yield from self._batched(out)
            while len(self.buffer) > self.cfg.shuffle_buffer:  # a taken-over buffer drains to its size
                yield from self._batched(self.buffer.pop(rng.randrange(len(self.buffer))))

    def _batched(self, held: HeldSample) -> Iterator[dict]:
        """Decode one sample into its bucket; yield the bucket's batch once it is full."""
        sample = self.decode(held, held.epoch)
        if sample is None:
            return
        bucket = self.pending[sample.bucket]
        bucket.append((held.position, held.epoch, sample))
        if len(bucket) == self.cfg.batch_size:
            samples = [s for _, _, s in bucket]
            batch = (collate_features if self.features else collate)(samples, self.cfg.max_subjects)
            if not self.features:
                for s in samples:
                    self.counters.update(s.references)
            bucket.clear()
            self.counters["samples_yielded"] += len(batch["key"])
            yield {**batch, "slot": self.slot()[0], "counters": dict(self.counters)}
