"""User errors are whole: one line, never cut mid-word."""

from __future__ import annotations

from cxr.runtime.errors import shorten


def test_a_message_that_fits_is_whole_and_a_long_one_ends_on_a_word_with_what_was_left_out():
    message = "model.weights=imagenet: could not download the weights " * 5
    assert shorten(message, 1000) == message
    short = shorten(message, 100)
    assert len(short) <= 100 and short.endswith("more characters)")
    kept = short.split(" ... (")[0]
    assert message.startswith(kept) and message[len(kept)] == " "  # the cut falls between words
    left = int(short.split(" ... (")[1].split()[0])
    assert len(kept) + left == len(message)
