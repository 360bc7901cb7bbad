"""Captions (HyperHuman §4: HumanVerse re-captions every image with BLIP-2, since web alt texts are
noisy; both the caption and the alt text are kept).

The model is BLIP-2 (Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image
Encoders and Large Language Models", ICML 2023), ``Salesforce/blip2-opt-2.7b`` through transformers
(``Blip2Processor`` + ``Blip2ForConditionalGeneration``; ``docs/models.md``) with LAVIS's captioning
defaults: beam search (``num_beams=5``), ``max_new_tokens=30``, ``min_length=1``,
``repetition_penalty=1.0``, ``length_penalty=1.0``, no sampling, empty prompt.

The *stored* image is captioned, never the outpainted canvas: the caption describes what the
dataset holds. Every image is resized to the processor's 224x224, so a whole batch is one tensor.

Degenerate outputs (:func:`caption_problem`) fall back to the source's alt text, flagged
``caption_source = "alt_text"``; good captions are ``"model"``; with neither, ``caption`` and
``caption_source`` are null (the row is kept: a missing caption is not a reason to reject).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass

from humanverse.config import check
from pipelines import rows as R
from pipelines.stages.base import ModelStage
from pipelines.stages.loading import Device, Dtype

log = logging.getLogger(__name__)

#: longest phrase (in words) whose back-to-back repetition alone makes a caption degenerate
MAX_REPEATED_PHRASE = 3


@dataclass(frozen=True)
class CaptionConfig:
    #: model spec overriding ``--models`` for this stage (a zoo spec)
    model: str | None = None
    max_new_tokens: int = 30
    num_beams: int = 5
    #: text the language model continues (LAVIS captioning: ""; the COCO fine-tunes used "a photo of");
    #: stripped from the stored caption
    prompt: str = ""
    #: captions with fewer words fall back to the alt text
    min_words: int = 2
    device: Device = "auto"
    dtype: Dtype = "auto"

    def __post_init__(self):
        check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
              f"caption.max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}.")
        check(isinstance(self.num_beams, int) and self.num_beams >= 1,
              f"caption.num_beams must be an integer >= 1, got {self.num_beams!r}.")
        check(isinstance(self.min_words, int) and self.min_words >= 1,
              f"caption.min_words must be an integer >= 1, got {self.min_words!r}.")
        check(isinstance(self.prompt, str), f"caption.prompt must be a string, got {self.prompt!r}.")


# -- judging captions (pure functions) -------------------------------------------------------------

_SPACES = re.compile(r"\s+")


def clean_text(text: str | None) -> str:
    """Collapse every run of whitespace (newlines included) to one space and strip the ends."""
    return _SPACES.sub(" ", text or "").strip()


def _has_alnum(token: str) -> bool:
    return any(c.isalnum() for c in token)


def _words(text: str) -> list[str]:
    """Whitespace tokens holding at least one letter or digit, lower-cased, with the punctuation
    and symbols around them removed (``"Man,"`` -> ``"man"``; ``"--"`` and ``"\\ufffd"`` are not words)."""
    out = []
    for token in text.split():
        if not _has_alnum(token):
            continue
        chars = list(token)
        while chars and not chars[0].isalnum():
            chars.pop(0)
        while chars and not chars[-1].isalnum():
            chars.pop()
        out.append(unicodedata.normalize("NFKC", "".join(chars)).casefold())
    return out


def caption_problem(text: str | None, min_words: int = 2) -> str | None:
    """Why a generated caption is unusable, or None when it is fine.

    Rules, in order:

    * ``"empty"``: nothing but whitespace;
    * ``"no_words"``: no letter or digit at all (only punctuation, symbols, U+FFFD...);
    * ``"too_short"``: fewer than ``min_words`` words (a word: a whitespace token with a letter or digit);
    * ``"repetition"``: the words are one phrase of at most :data:`MAX_REPEATED_PHRASE` words repeated
      back to back, at least twice (``"man man man"``, ``"a man a man"``), ignoring case and the
      punctuation around words.
    """
    text = clean_text(text)
    if not text:
        return "empty"
    words = _words(text)
    if not words:
        return "no_words"
    if len(words) < min_words:
        return "too_short"
    n = len(words)
    for k in range(1, min(MAX_REPEATED_PHRASE, n // 2) + 1):
        if n % k == 0 and words == words[:k] * (n // k):
            return "repetition"
    return None


def choose_caption(generated: str | None, alt_text: str | None, min_words: int = 2) -> tuple[str | None, str | None]:
    """``(caption, caption_source)`` for one image.

    The generated caption (whitespace cleaned) when :func:`caption_problem` finds nothing wrong with
    it (``"model"``); else the alt text, whitespace cleaned, when it holds at least one letter or
    digit (``"alt_text"``); else ``(None, None)``. A degenerate generated caption is never stored.
    """
    if caption_problem(generated, min_words) is None:
        return clean_text(generated), "model"
    alt = clean_text(alt_text)
    if alt and _has_alnum(alt):
        return alt, "alt_text"
    return None, None


# -- the stage ---------------------------------------------------------------------------------------


class Captioner(ModelStage):
    """Fills ``caption`` and ``caption_source`` for every alive row."""

    name = "caption"

    def __init__(self, config: CaptionConfig, models: str = "paper", clip_dim: int | None = None):
        super().__init__(clip_dim)
        import torch
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        from pipelines.stages.loading import load_pretrained

        self.model, self.processor, self.tag, self.device, self.dtype = load_pretrained(
            "blip2-opt-2.7b", config, models, Blip2ForConditionalGeneration, processor_class=Blip2Processor,
            load_in_dtype=True)
        self.config = config
        self._torch = torch
        log.info("caption: model %s, %d beams, max %d new tokens, prompt %r", self.tag, config.num_beams,
                 config.max_new_tokens, config.prompt)

    def generate(self, images: list) -> list[str]:
        """Raw captions for PIL images, prompt removed, whitespace cleaned (one batched ``generate``)."""
        torch = self._torch
        prompt = self.config.prompt
        if prompt:
            inputs = self.processor(images=images, text=[prompt] * len(images), return_tensors="pt")
        else:  # images only: generate() builds the [image] x 32 + BOS prefix itself
            inputs = self.processor(images=images, return_tensors="pt")
        inputs = inputs.to(self.device, self.dtype)  # casts only the float tensors (pixel_values)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens,
                                      num_beams=self.config.num_beams, do_sample=False, min_length=1,
                                      repetition_penalty=1.0, length_penalty=1.0)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and ids.shape[1] >= prompt_ids.shape[1] and \
                torch.equal(ids[:, :prompt_ids.shape[1]].to(prompt_ids.device), prompt_ids):
            ids = ids[:, prompt_ids.shape[1]:]  # output echoes the prompt: keep only the new tokens
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        else:  # fall back to stripping the prompt's text
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            texts = [t.strip()[len(prompt):] if prompt and t.strip().startswith(prompt) else t for t in texts]
        return [clean_text(t) for t in texts]

    def process(self, rows: list[dict]) -> None:
        from humanverse.codecs import decode_image

        images = [decode_image(r["image"]) for r in rows]
        texts = self.generate(images)
        fallbacks = 0
        for r, text in zip(rows, texts):
            r["caption"], r["caption_source"] = choose_caption(text, r.get("alt_text"), self.config.min_words)
            fallbacks += r["caption_source"] != "model"
            R.add_model(r, self.name, self.tag)
        if fallbacks:
            log.debug("caption: %d of %d captions fell back to the alt text (or none)", fallbacks, len(rows))


__all__ = ["CaptionConfig", "Captioner", "caption_problem", "choose_caption", "clean_text"]
