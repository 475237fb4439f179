"""Tiny, randomly initialised checkpoints saved in the real formats, for tests and the demo.

Each builder writes a folder that the production loaders (`from_pretrained` on a hub id or path) read exactly
as they read real weights, so tests exercise the real loading code without any download.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Qwen2-VL's chat template (the prompt layout the real checkpoints were trained on), trimmed to what we send:
# system/user/assistant turns whose content is text, images and videos.
QWEN2VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN2VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]

# Text the tiny tokenizer learns its merges from: enough English and JSON punctuation that prompts tokenize
# into a realistic number of tokens. Byte-level BPE encodes any text whatever the merges.
_CORPUS = [
    "A man in a red jacket walks a brown dog along a beach at sunset while the camera pans left.",
    "Two women sit at a wooden table in a kitchen, talking and drinking coffee; the camera is static.",
    "A child rides a bicycle down a street lined with trees; cars pass in the background.",
    'Return JSON: {"caption": "...", "subjects": ["person", "face", "dog", "car", "bicycle"]}',
    "Describe the video: the main subjects, their actions and changes, the environment and the camera motion.",
    "Keep the visual identity of each subject from the reference images, natural motion, coherent scene.",
]


def _train_bpe_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN2VL_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def save_tiny_qwen2vl(path: str | Path, hidden_size: int = 64, seed: int = 0) -> Path:
    """A Qwen2-VL with 2 text layers and a 2-block vision tower, plus a real processor (BPE tokenizer, image
    processor, chat template), saved with `save_pretrained`. Returns the folder."""
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    path = Path(path)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=_train_bpe_tokenizer(vocab_size=600),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=QWEN2VL_SPECIAL_TOKENS[1:],
    )
    tokenizer.padding_side = "left"  # batched generation needs left padding
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    # Small images keep the tiny model fast: 28-px patches (14 x merge 2), at most 16 visual tokens per image.
    pixels = dict(min_pixels=28 * 28, max_pixels=4 * 4 * 28 * 28)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    heads = 2  # head_dim 32: the smallest head size vLLM's CPU attention kernels take
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            # mrope splits each head's rotary half into temporal/height/width sections.
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": _mrope_section(hidden_size // heads)},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden_size, num_heads=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _train_unigram_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    # T5's special ids: pad 0, eos 1, unk 2; every sequence ends with eos.
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok


def save_tiny_t5(path: str | Path, d_model: int = 32, seed: int = 0) -> Path:
    """A 2-layer T5 encoder with a locally trained Unigram tokenizer, saved with `save_pretrained`."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    path = Path(path)
    tokenizer = T5Tokenizer(tokenizer_object=_train_unigram_tokenizer(vocab_size=200), pad_token="<pad>",
                            eos_token="</s>", unk_token="<unk>", extra_ids=0)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model, num_layers=2,
                      num_heads=4, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    torch.manual_seed(seed)
    T5EncoderModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_cogvideox_vae(path: str | Path, seed: int = 0) -> Path:
    """diffusers' CogVideoX VAE (4x8x8 compression, 16 latent channels) with 8-16 channel blocks."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 16, 16, 16), latent_channels=16, layers_per_block=1,
                                 norm_num_groups=4, scaling_factor=0.7)
    vae.eval().save_pretrained(path)
    return Path(path)


def save_tiny_cogvideox_transformer(path: str | Path, dit=None, seed: int = 0) -> Path:
    """A diffusers `CogVideoXTransformer3DModel` with the architecture of DitConfig ``dit`` (the tiny preset's by
    default): what a real CogVideoX checkpoint looks like to the conversion."""
    from diffusers import CogVideoXTransformer3DModel

    from cinema_model.config import preset
    from cinema_model.convert import cogvideox_kwargs

    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(**cogvideox_kwargs(dit or preset("tiny", "unused").dit))
    # diffusers initialises the adaptive-norm linears like any other; perturb every weight so that a mapping
    # error cannot hide behind equal initial values.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval().save_pretrained(path)
    return Path(path)


def save_tiny_checkpoints(root: str | Path) -> Path:
    """Every tiny checkpoint the `tiny` and `mid` presets name, under ``root``."""
    root = Path(root)
    save_tiny_qwen2vl(root / "qwen2vl")
    save_tiny_t5(root / "t5")
    save_tiny_cogvideox_vae(root / "vae")
    save_tiny_cogvideox_transformer(root / "cogvideox")
    return root
