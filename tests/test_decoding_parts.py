"""The parts of one `MediaReader` read pass, each against hand-computed values (no media files)."""

import fractions
import types

import numpy as np
import pytest

from transformers_xkd.decoding_xkd import (
    _MAX_CONSECUTIVE_BAD_PACKETS,
    MediaDecodingError,
    _FramePicker,
    _H264Skipper,
    _PacketDecoder,
    cut_window,
)


class _FakeFrame:
    """A decoded video frame of one grey level that counts its RGB conversions."""

    def __init__(self, level: int):
        self.level, self.conversions, self.rotation = level, 0, 0

    def to_ndarray(self, format):
        assert format == "rgb24"
        self.conversions += 1
        return np.full((2, 3, 3), self.level, np.uint8)


def test_frame_picker_gives_each_time_the_frame_shown_then_and_pads_both_ends():
    # native frames at 0.1, 0.2, 0.3 s (step 0.1); targets before the first, between, within the 1e-4 s tolerance
    # of a frame (0.29995 -> the frame at 0.3) and past the end (0.4 = last frame + step, 0.5)
    targets = np.array([0.0, 0.1, 0.15, 0.29995, 0.35, 0.4, 0.5])
    picker = _FramePicker("<test>", targets, frame_step=0.1, origin=0.0)
    frames = {t: _FakeFrame(level) for t, level in ((0.1, 10), (0.2, 20), (0.3, 30))}
    for t, frame in frames.items():
        assert not picker.done
        picker.add(frame, t)
    out, chosen, num_padded = picker.finish()
    assert out.shape == (7, 2, 3, 3) and out.dtype == np.uint8
    assert out[:, 0, 0, 0].tolist() == [10, 10, 10, 30, 30, 30, 30]
    assert chosen.tolist() == [0.1, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3]
    assert num_padded == 2  # 0.4 and 0.5 are at or past the end of the video (0.3 + 0.1)
    # each frame is converted at most once; the frame at 0.2 is shown at no target and never converted (the guess
    # for the frame after it, 0.2 + 0.1, does not pass the next target's limit 0.29995 + 1e-4)
    assert [f.conversions for f in frames.values()] == [1, 0, 1]


def test_frame_picker_makes_up_missing_times_and_keeps_decode_order():
    targets = np.array([0.0, 0.5, 1.0])
    picker = _FramePicker("<test>", targets, frame_step=0.5, origin=0.0)
    picker.add(_FakeFrame(1), None)  # no time stamp: index 0 * step
    picker.add(_FakeFrame(2), None)  # index 1 * step = 0.5
    picker.add(_FakeFrame(3), 0.25)  # earlier than the last frame: placed just after it (0.5 + 1e-6)
    out, chosen, num_padded = picker.finish()
    # 0.5 + 1e-6 is within the 1e-4 s tolerance of the target 0.5: the third frame is the one shown then
    assert out[:, 0, 0, 0].tolist() == [1, 3, 3]
    assert chosen.tolist() == [0.0, 0.5 + 1e-6, 0.5 + 1e-6]
    assert num_padded == 1  # 1.0 >= 0.5 + 1e-6 + 0.5 - 1e-4


def test_frame_picker_refuses_a_frame_size_change_and_an_empty_stream():
    picker = _FramePicker("<clip>", np.array([0.0, 0.1]), frame_step=0.1, origin=0.0)
    picker.add(_FakeFrame(1), 0.0)
    big = _FakeFrame(2)
    big.to_ndarray = lambda format: np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(MediaDecodingError, match="frame size changes mid-stream"):
        picker.add(big, 0.1)
        picker.finish()
    with pytest.raises(MediaDecodingError, match="no video frame could be decoded"):
        _FramePicker("<clip>", np.array([0.0]), frame_step=0.1, origin=0.0).finish()


def test_cut_audio_pads_with_zeros_where_there_are_no_samples():
    full = np.arange(1, 11, dtype=np.float32)  # 10 samples at 10 Hz from 0.5 s: sample k at 0.5 + k / 10
    out, padded = cut_window(full, 0.3, 0.5, 6, 10)  # 0.3 .. 0.9: two zeros, then the samples at 0.5 .. 0.8
    assert out.tolist() == [0, 0, 1, 2, 3, 4] and padded == 2 and out.dtype == np.float32
    out, padded = cut_window(full, 1.4, 0.5, 3, 10)  # the last sample (at 1.4), then two zeros past the end
    assert out.tolist() == [10, 0, 0] and padded == 2
    out, padded = cut_window(full, 0.7, 0.5, None, 10)  # to the end
    assert out.tolist() == [3, 4, 5, 6, 7, 8, 9, 10] and padded == 0
    out, padded = cut_window(full, 3.0, 0.5, None, 10)  # starts after the last sample: nothing
    assert out.size == 0 and padded == 0
    out, padded = cut_window(full, 0.2, 0.5, None, 10)  # to the end from before the first sample: 3 zeros, all 10
    assert out.tolist() == [0, 0, 0, *range(1, 11)] and padded == 3  # (the last 3 samples used to be dropped)


def test_packet_decoder_counts_bad_packets_and_stops_after_too_many_in_a_row():
    class Packet:
        def __init__(self, ok):
            self.ok = ok

        def decode(self):
            if not self.ok:
                raise ValueError("corrupt")
            return ["frame"]

    dec = _PacketDecoder("<clip>")
    assert dec.decode(Packet(False)) is None and dec.skipped == 1 and not dec.decoded_any
    assert dec.decode(Packet(True)) == ["frame"] and dec.decoded_any and dec.consecutive_bad == 0
    for _ in range(_MAX_CONSECUTIVE_BAD_PACKETS + 5):  # after a frame decoded, bad packets are only counted
        dec.decode(Packet(False))
    assert dec.skipped == _MAX_CONSECUTIVE_BAD_PACKETS + 6
    fresh = _PacketDecoder("<clip>")
    for _ in range(_MAX_CONSECUTIVE_BAD_PACKETS):
        fresh.decode(Packet(False))
    with pytest.raises(MediaDecodingError, match=f"{_MAX_CONSECUTIVE_BAD_PACKETS + 1} packets in a row"):
        fresh.decode(Packet(False))


def test_h264_skipper_skips_only_frames_that_a_later_seen_frame_takes_over():
    stream = types.SimpleNamespace(
        time_base=fractions.Fraction(1, 100), codec_context=types.SimpleNamespace(extradata=None)
    )
    targets = np.array([1.0, 1.125])  # shown-at limits 1.0001 and 1.1251
    sk = _H264Skipper(stream, targets, origin=0.0, frame_step=0.04)
    assert not sk.holding  # no avcC extradata: no IDR search before the window
    for pts in (96, 100, 104, 108, 112, 116):  # frames every 0.04 s from 0.96 s
        packet = types.SimpleNamespace(is_keyframe=False, size=10)
        assert sk.push(packet, pts) is False
    sk.first_decoded_time = 0.96
    decisions = {t: sk.can_skip(t) for t in (0.96, 1.0, 1.04, 1.08, 1.12, 1.16)}
    # 0.96: the first frame after the seek; 1.0: shown at 1.0; 1.04 and 1.08: 1.12 takes over 1.125; 1.12: shown at
    # 1.125; 1.16: past the last target
    assert decisions == {0.96: False, 1.0: False, 1.04: True, 1.08: True, 1.12: False, 1.16: False}
    assert sk.next_frame_time(1.04) == 1.08 and sk.next_frame_time(1.16) == pytest.approx(1.2)
    sk.stop()  # nothing skipped yet: skipping just stops
    assert not sk.active
