"""Caption + subject list from a Qwen2-VL-family MLLM in one call: prompt, batched generation, lenient parsing.

The model answers with JSON ``{"caption": str, "subjects": [str, ...]}``; real models wrap it in code fences,
add prose around it or use Python quotes, so parsing accepts all of that and rejects only what has no caption.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.contract import MAX_SUBJECTS

from curation.config import CaptionConfig
from curation.video.frames import decode_image


class CaptionFormatError(ValueError):
    """The model's answer holds no usable caption."""


@dataclass
class Caption:
    caption: str
    subjects: list[str]


# generate(videos, sample) -> one decoded answer (or the exception that clip's request met) per video, in the
# engine's own video form; sample=False is greedy, True draws (for retries).
Generate = Callable[[list, bool], list[str | Exception]]

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


# What structured output holds the answer to (caption.engine: vllm); parse_caption reads the same shape leniently.
CAPTION_SCHEMA = {
    "type": "object",
    "properties": {
        "caption": {"type": "string", "minLength": 1},
        "subjects": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_SUBJECTS},
    },
    "required": ["caption", "subjects"],
    "additionalProperties": False,
}


def prompt_text(cfg: CaptionConfig) -> str:
    return cfg.prompt.format(max_subjects=MAX_SUBJECTS)


def prompt_content(cfg: CaptionConfig, video: dict) -> list[dict]:
    """The user turn, the same for both engines: instruction first, so that every clip's prompt starts with the
    same tokens and a serving engine's prefix cache holds them once; ``video`` is the engine's video part."""
    return [{"type": "text", "text": prompt_text(cfg)}, video]


def _first_object(text: str) -> dict | None:
    """The first JSON (or Python-literal) object in ``text``, ignoring anything after it."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            end = text.rfind("}")
            try:  # single quotes, True/None: a Python literal, evaluated safely (no code runs)
                obj = ast.literal_eval(text[start : end + 1])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if isinstance(obj, dict):
            return obj
    return None


def _labels(value) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        return []
    labels = []
    for item in value:
        if isinstance(item, dict):
            item = item.get("label") or item.get("name") or ""
        if isinstance(item, str) and item.strip():
            labels.append(" ".join(item.strip().lower().split()))
    return list(dict.fromkeys(labels))


def parse_caption(text: str) -> Caption:
    """Caption and subject labels (lower case, unique, in order) from a model answer; CaptionFormatError if the
    answer has no non-empty caption. A missing or malformed subject list is an empty list."""
    fenced = _FENCE.search(text)
    obj = _first_object(fenced.group(1) if fenced else text) or (_first_object(text) if fenced else None)
    if obj is None:
        raise CaptionFormatError(f"no JSON object in the model output: {text[:200]!r}")
    caption = obj.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise CaptionFormatError(f"no caption in the model output: {text[:200]!r}")
    return Caption(caption.strip(), _labels(obj.get("subjects")))


def caption_videos(generate: Generate, videos: list, retries: int) -> list[Caption | Exception]:
    """One generate() call for the batch, then up to ``retries`` sampled calls for the answers that did not parse.
    A clip still unparsable gets its CaptionFormatError; an answer that is an exception (an engine that rejected
    that clip's input) is that clip's result as it is. The others are unaffected."""
    results: list[Caption | Exception] = [CaptionFormatError("not generated")] * len(videos)
    todo = list(range(len(videos)))
    for attempt in range(retries + 1):
        answers = generate([videos[i] for i in todo], attempt > 0)
        failed = []
        for i, answer in zip(todo, answers):
            if isinstance(answer, Exception):
                results[i] = answer
                continue
            try:
                results[i] = parse_caption(answer)
            except CaptionFormatError as e:
                results[i] = e
                failed.append(i)
        todo = failed
        if not todo:
            break
    return results


class Captioner:
    """caption.engine transformers: a Qwen2-VL / Qwen2.5-VL model and its processor behind a batched
    ``generate(videos, sample)``, each video one (T, H, W, 3) uint8 RGB array."""

    def __init__(self, processor, model, cfg: CaptionConfig):
        self.processor, self.model, self.cfg = processor, model, cfg
        self.processor.tokenizer.padding_side = "left"  # batched generation continues every row at its end
        messages = [{"role": "user", "content": prompt_content(cfg, {"type": "video"})}]
        self.prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @classmethod
    def load(cls, cfg: CaptionConfig, device: str) -> "Captioner":
        """From ``cfg.model``: a hub id (local cache only) or a folder."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = getattr(torch, cfg.dtype) if device.startswith("cuda") else torch.float32
        model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
        return cls(AutoProcessor.from_pretrained(cfg.model), model, cfg)

    @staticmethod
    def video(jpegs: list[bytes]) -> np.ndarray:
        return np.stack([decode_image(f) for f in jpegs])

    def __call__(self, videos: list[np.ndarray], sample: bool) -> list[str]:
        """``videos``: one (T, H, W, 3) uint8 RGB array per clip."""
        import torch

        inputs = self.processor(text=[self.prompt] * len(videos), videos=videos, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        options = dict(do_sample=True, temperature=0.7, top_p=0.9) if sample else dict(do_sample=False)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, **options)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
