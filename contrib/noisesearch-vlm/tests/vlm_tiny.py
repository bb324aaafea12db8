"""Tiny vision-language models built from configs, for the tests: no download.

Each folder holds what a hub checkpoint holds (``config.json``, weights, ``generation_config.json``,
processor, tokenizer and chat template), written by ``save_pretrained``, so that the judge loads
it through ``AutoProcessor`` and ``AutoModelForImageTextToText`` like a real one. The tokenizer is
a word-level ``tokenizers`` model wrapped as ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["score", "image", "prompt", "a", "red", "apple", "of", "the", "on", "table", "{", "}", '"', ":", ",",
         "user", "assistant", "User", "Assistant", "reply", "integer"]
DIGITS = [str(i) for i in range(11)]  # "10" is one token, as in many real vocabularies


def word_tokenizer(specials: list[str], pad: str, eos: str, bos: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[UNK]", *specials, *DIGITS, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=False),
    ])
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # words joined by spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token=pad,
                                   eos_token=eos, bos_token=bos)
    fast.add_special_tokens({"additional_special_tokens": specials})
    return fast


def text_config(tokenizer, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id or tokenizer.pad_token_id,
                **extra)


def save(model, processor, folder: Path, tokenizer) -> Path:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


IDEFICS_SPECIALS = ["<|endoftext|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                    "<global-img>", "[PAD]"]
IDEFICS_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %} {{ item['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def idefics_config(config_class, tokenizer):
    """Idefics3's and SmolVLM's tiny configuration: a one-layer vision tower on 32 px images in 8 px
    patches, pixel-shuffled 2 x 2 into 4 image tokens, and a 2-layer Llama."""
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    return config_class(vision_config=vision, text_config=dict(model_type="llama", **text_config(tokenizer)),
                        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def idefics3(folder: Path, seed: int = 0) -> Path:
    """A tiny Idefics3 (SmolVLM's architecture): 32 px images, 4 image tokens, a 2-layer Llama."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tokenizer = word_tokenizer(IDEFICS_SPECIALS, pad="[PAD]", eos="<end_of_utterance>", bos="<|endoftext|>")
    images = Idefics3ImageProcessor(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                    do_image_splitting=False)
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=IDEFICS_TEMPLATE)
    config = idefics_config(Idefics3Config, tokenizer)
    torch.manual_seed(seed)
    return save(Idefics3ForConditionalGeneration(config), processor, folder, tokenizer)


def smolvlm(folder: Path, seed: int = 0) -> Path:
    """A tiny SmolVLM: Idefics3's shape (32 px images, 4 image tokens, a 2-layer Llama) under its own
    classes, whose processor also takes videos (and imports ``num2words``: the ``smolvlm`` extra)."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    tokenizer = word_tokenizer(IDEFICS_SPECIALS, pad="[PAD]", eos="<end_of_utterance>", bos="<|endoftext|>")
    size = dict(size={"longest_edge": 32}, max_image_size={"longest_edge": 32})
    processor = SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**size, do_image_splitting=False),
                                 tokenizer=tokenizer, video_processor=SmolVLMVideoProcessor(**size),
                                 image_seq_len=4, chat_template=IDEFICS_TEMPLATE)
    config = idefics_config(SmolVLMConfig, tokenizer)
    torch.manual_seed(seed)
    return save(SmolVLMForConditionalGeneration(config), processor, folder, tokenizer)


def qwen2_vl(folder: Path, seed: int = 0) -> Path:
    """A tiny Qwen2-VL: 4 px patches merged 2 x 2, multimodal rotary positions, a 2-layer decoder."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tokenizer = word_tokenizer(specials, pad="<|endoftext|>", eos="<|im_end|>")
    template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    pixels = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8, max_pixels=32 * 32)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=template)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2),
        text_config=text_config(tokenizer, rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]}),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    return save(Qwen2VLForConditionalGeneration(config), processor, folder, tokenizer)


def qwen2_5_vl(folder: Path, seed: int = 0) -> Path:
    """A tiny Qwen2.5-VL: Qwen2-VL's processor and tokens, windowed vision attention (one block
    full), a 2-layer decoder."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    qwen2_vl(folder, seed)  # the tokenizer, image processor and template are Qwen2-VL's
    processor = Qwen2_5_VLProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=16, out_hidden_size=32,
                           fullatt_block_indexes=[1]),
        text_config=text_config(tokenizer, rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]}),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    return save(Qwen2_5_VLForConditionalGeneration(config), processor, folder, tokenizer)


BUILDERS = {"idefics3": idefics3, "smolvlm": smolvlm, "qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl}


def missing(family: str) -> str | None:
    """Why ``family`` cannot be built here (``None``: it can): SmolVLM needs a transformers that
    has it and ``num2words`` (the plugin's ``smolvlm`` extra, which the project's install takes)."""
    if family != "smolvlm":
        return None
    import importlib.util

    import transformers

    if not hasattr(transformers, "SmolVLMForConditionalGeneration"):
        return f"transformers {transformers.__version__} has no SmolVLM"
    if importlib.util.find_spec("num2words") is None:
        return "SmolVLM's processor imports num2words: pip install './contrib/noisesearch-vlm[smolvlm]'"
    return None
