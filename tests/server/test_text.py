"""The text filters every detokenizing engine shares: UTF-8 deltas and stop strings."""

from __future__ import annotations

import random

import pytest

from tokenwire.server.engines.text import StopStrings, Utf8Deltas


def test_utf8_deltas_hold_incomplete_characters():
    deltas = Utf8Deltas()
    data = "a€🚀é".encode()
    out = [deltas.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) == "a€🚀é"
    assert all("\ufffd" not in piece for piece in out)
    assert out[1:4] == ["", "", "€"]


def test_utf8_deltas_render_a_character_cut_off_at_the_end_as_decode_does():
    deltas = Utf8Deltas()
    assert deltas.push(b"ok" + "日".encode()[:2]) == "ok"
    assert deltas.finish() == "\ufffd" == "日".encode()[:2].decode(errors="replace")
    # Ready for the next sequence: nothing of the old one is left.
    assert deltas.push(b"a") == "a" and deltas.finish() == ""


def test_utf8_deltas_pass_invalid_bytes_on_at_once():
    deltas = Utf8Deltas()
    # 0xE6 then "A": 0xE6 can never complete, so its U+FFFD goes out with the "A".
    assert deltas.push(b"\xe6") == ""
    assert deltas.push(b"A\x80") == "\ufffdA\ufffd"


@pytest.mark.parametrize("seed", range(40))
def test_utf8_deltas_add_up_to_a_lossy_decode_of_the_bytes(seed):
    """Any bytes in any chunks: the deltas and the end add up to decoding them all at once,
    with U+FFFD per invalid part (as byte-level tokenizers' decode does)."""
    rng = random.Random(seed)
    text = "".join(rng.choice("aé日🚀€") for _ in range(30))
    data = bytearray(text.encode())
    for _ in range(rng.randint(0, 4)):  # some noise: stray continuation and lead bytes
        data.insert(rng.randrange(len(data) + 1), rng.choice((0x80, 0xBF, 0xE6, 0xF0, 0xFF)))
    if rng.random() < 0.5:
        data = data[: rng.randrange(1, len(data))]  # cut off anywhere, maybe mid-character
    cuts = sorted(rng.sample(range(1, len(data)), min(12, len(data) - 1)))
    chunks = [bytes(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    deltas = Utf8Deltas()
    out = [deltas.push(chunk) for chunk in chunks]
    end = deltas.finish()
    assert "".join(out) + end == bytes(data).decode("utf-8", errors="replace")
    if bytes(data) == text.encode():
        assert "\ufffd" not in "".join(out) + end  # valid UTF-8 is never garbled by a split


@pytest.mark.parametrize("seed", range(20))
def test_stop_strings_match_across_any_split(seed):
    rng = random.Random(seed)
    text = "the quick brown fox jumps over the lazy dog"
    stops = ["lazy", "fox j", "zzz"]
    cuts = sorted(rng.sample(range(1, len(text)), 8))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    matcher = StopStrings(stops, include_stop=False)
    out, match = [], None
    for piece in pieces:
        emitted, match = matcher.push(piece)
        out.append(emitted)
        if match:
            break
    assert match == "fox j"
    assert "".join(out) == "the quick brown "


def test_text_that_may_start_a_stop_waits_then_is_released():
    matcher = StopStrings(["STOP"], include_stop=True)
    assert matcher.push("hello ST") == ("hello ", None)
    assert matcher.push("A") == ("STA", None)  # not a stop after all
    assert matcher.push("go S") == ("go ", None)
    assert matcher.flush() == "S"  # the sequence ended for another reason
    assert matcher.push("xSTOPy") == ("xSTOP", "STOP")


def test_earliest_stop_wins():
    matcher = StopStrings(["world", "o w"], include_stop=False)
    assert matcher.push("hello world") == ("hell", "o w")


def test_held_is_what_may_still_start_a_stop():
    matcher = StopStrings(["STOP"], include_stop=False)
    assert matcher.push("go ST") == ("go ", None)
    assert matcher.held == "ST"
    assert matcher.flush() == "ST" and matcher.held == ""


def test_no_stops_pass_everything_through():
    matcher = StopStrings([], include_stop=False)
    assert not matcher
    assert matcher.push("anything") == ("anything", None)


def test_utf8_deltas_replace_encoded_surrogates_as_decode_does():
    deltas = Utf8Deltas()
    data = b"a\xed\xa0\x80b"  # U+D800 encoded: not valid UTF-8
    assert deltas.push(data) + deltas.finish() == data.decode("utf-8", errors="replace")
