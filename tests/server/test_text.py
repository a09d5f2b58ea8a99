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


def test_utf8_deltas_drop_a_character_cut_off_at_the_end():
    deltas = Utf8Deltas()
    assert deltas.push(b"ok" + "日".encode()[:2]) == "ok"
    assert deltas.finish() == ""


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


def test_no_stops_pass_everything_through():
    matcher = StopStrings([], include_stop=False)
    assert not matcher
    assert matcher.push("anything") == ("anything", None)
