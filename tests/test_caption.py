"""Caption stage (BLIP-2) on the tiny real-class model, and the rules that judge its captions."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from humanverse.codecs import decode_image
from humanverse.config import ConfigError
from humanverse.testing.synthetic import make_sample
from pipelines import rows as R
from pipelines.stages.caption import CaptionConfig, Captioner, caption_problem, choose_caption, clean_text


def _row(img: Image.Image, i: int, alt_text: str | None) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    row = R.empty_row(R.inflight_schema(None))
    row.update(source_shard="s", source_index=i, id=f"{i:064x}", image=buf.getvalue(), width=img.width,
               height=img.height, orig_width=img.width, orig_height=img.height, persons=[], alt_text=alt_text)
    return row


def _table(rows):
    return R.to_table(rows, R.inflight_schema(None))


# -- the pure judge -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, min_words, problem", [
    ("a man in a red shirt standing on a street", 2, None),
    ("  a woman\n  smiling  ", 2, None),
    ("Two people, hugging.", 2, None),
    ("a man", 2, None),
    ("man", 1, None),
    ("3 people", 2, None),
    ("a man and a woman", 2, None),          # repeated words, but not one phrase over and over
    ("man man man woman", 2, None),
    (None, 2, "empty"),
    ("", 2, "empty"),
    (" \n\t ", 2, "empty"),
    ("...", 2, "no_words"),
    ("!!! ??? ---", 2, "no_words"),
    ("\ufffd\ufffd\ufffd", 2, "no_words"),
    ("man", 2, "too_short"),
    ("man.", 2, "too_short"),
    ("a", 2, "too_short"),
    ("man , !", 2, "too_short"),             # punctuation tokens are not words
    ("a man", 3, "too_short"),
    ("the the the the", 2, "repetition"),
    ("The the THE.", 2, "repetition"),       # case and punctuation ignored
    ("man, man", 2, "repetition"),
    ("a man a man a man", 2, "repetition"),
    ("a man on a man on", 2, "repetition"),
    ("in the sun in the sun", 2, "repetition"),
    ("a b c d a b c d", 2, None),            # a 4-word phrase twice: longer than MAX_REPEATED_PHRASE
])
def test_caption_problem(text, min_words, problem):
    assert caption_problem(text, min_words) == problem


def test_choose_caption():
    assert choose_caption("a man  running\n", "alt", 2) == ("a man running", "model")
    assert choose_caption("man", "A man\nrunning in a park ", 2) == ("A man running in a park", "alt_text")
    assert choose_caption("the the the", "a dog", 2) == ("a dog", "alt_text")
    assert choose_caption("", "a dog", 2) == ("a dog", "alt_text")
    assert choose_caption("", None, 2) == (None, None)
    assert choose_caption("...", "   ", 2) == (None, None)
    assert choose_caption("the the", "!!!", 2) == (None, None)  # an alt text with no letter is empty too
    assert choose_caption(None, "x", 2) == ("x", "alt_text")
    assert clean_text(" a\n\nb\tc ") == "a b c"


# -- the stage on the tiny model --------------------------------------------------------------------


def test_caption_config_is_validated():
    with pytest.raises(ConfigError, match="caption.max_new_tokens"):
        CaptionConfig(max_new_tokens=0)
    with pytest.raises(ConfigError, match="caption.num_beams"):
        CaptionConfig(num_beams=0)
    with pytest.raises(ConfigError, match="caption.min_words"):
        CaptionConfig(min_words=0)


@pytest.fixture(scope="module")
def peer(tiny_zoo):
    """The same checkpoint through transformers directly."""
    path = tiny_zoo / "blip2-opt-2.7b"
    return Blip2Processor.from_pretrained(path), Blip2ForConditionalGeneration.from_pretrained(path).eval()


def test_batch_of_three_matches_transformers_and_records_the_model(tiny_zoo, peer):
    rows = [_row(make_sample(200, 240, seed=1).image, 0, "a person in a park"),
            _row(make_sample(320, 200, seed=2).image, 1, None),
            _row(make_sample(256, 256, seed=3).image, 2, "two people")]
    rows[1]["canvas"] = b"never read: captions describe the stored image"
    stage = Captioner(CaptionConfig(max_new_tokens=8, device="cpu"), models="tiny")
    out = stage(_table(rows)).to_pylist()

    proc, model = peer
    images = [decode_image(r["image"]) for r in rows]
    with torch.inference_mode():
        ids = model.generate(**proc(images=images, return_tensors="pt"), max_new_tokens=8, num_beams=5)
    texts = [clean_text(t) for t in proc.batch_decode(ids, skip_special_tokens=True)]
    assert all(texts)  # the tiny model does say something
    for r, text, row in zip(out, texts, rows):
        assert r["reject_reason"] is None
        assert (r["caption"], r["caption_source"]) == choose_caption(text, row["alt_text"], 2)
        assert r["models"] == [{"stage": "caption", "model": "tiny:blip2-opt-2.7b"}]
    assert stage.generate(images) == texts


def test_prompt_is_stripped(tiny_zoo, peer):
    stage = Captioner(CaptionConfig(max_new_tokens=4, num_beams=2, prompt="a photo of", device="cpu"), models="tiny")
    images = [make_sample(200, 240, seed=s).image for s in (4, 5)]
    got = stage.generate(images)
    proc, model = peer
    inputs = proc(images=images, text=["a photo of"] * 2, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=4, num_beams=2)
    full = proc.batch_decode(ids, skip_special_tokens=True)
    assert all(f.startswith("a photo of") for f in full)
    new = proc.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert got == [clean_text(t) for t in new]


def test_degenerate_output_falls_back_to_alt_text_or_null(tiny_zoo):
    # one new token is at most one word: below min_words=2, so every caption falls back
    stage = Captioner(CaptionConfig(max_new_tokens=1, num_beams=1, device="cpu"), models="tiny")
    rows = [_row(make_sample(200, 240, seed=6).image, 0, "  A woman\nwalking a dog "),
            _row(make_sample(200, 240, seed=7).image, 1, None),
            _row(make_sample(200, 240, seed=8).image, 2, "")]
    texts = stage.generate([decode_image(r["image"]) for r in rows])
    assert all(caption_problem(t, 2) is not None for t in texts)
    out = stage(_table(rows)).to_pylist()
    assert [(r["caption"], r["caption_source"]) for r in out] == [
        ("A woman walking a dog", "alt_text"), (None, None), (None, None)]
    assert all(r["reject_reason"] is None for r in out)  # a missing caption is not a reject
    assert all(r["models"] == [{"stage": "caption", "model": "tiny:blip2-opt-2.7b"}] for r in out)
