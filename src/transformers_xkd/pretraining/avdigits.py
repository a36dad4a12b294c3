"""AV-digits: a small labelled audio-visual set, made offline, in which both modalities carry the class.

Each clip is a real mp4 file (H.264 video + AAC audio, written with PyAV) so that pretraining and the probes read it
through the package's own data path (PyAV decoding, the processors, the log-mel). The layout is the one
:func:`transformers_xkd.downstream.datasets.load_folder` reads, ``ROOT/{train,test}/<digit>/<clip>.mp4``, plus
``ROOT/manifest.json`` with every clip's generating factors.

Design (fixed before any result was looked at; the generator is not tuned to the outcome):

* **Frames.** One real handwritten digit of scikit-learn's ``load_digits`` (1,797 8x8 images, shipped with
  scikit-learn, no download) enlarged to 16x16 (pixel doubling) and drawn with a random bright colour, its ink
  as opacity, moving in a straight line at 0.75-2 px/frame and bouncing off the borders of a 36x36 frame (the
  pretraining short side; the 32x32 crops keep most of it). Clutter: a low-frequency colour background (a random
  3x3 colour grid, bilinearly enlarged), three moving semi-transparent rectangles (3-9 px), and per-frame Gaussian
  pixel noise (sigma 6/255). Why: the class is in the digit's shape, not in any pixel position, colour or mean
  intensity (random position, colour and clutter), so a linear probe on pooled raw pixels should do poorly while
  translation-invariant shape features can succeed. The pilot (shared/reference/learning_pilot.md) used a 20x20
  digit on a 36x36 frame where even raw pixels were at chance; here the digit is a little smaller relative to
  the frame but larger in patches (8x8 patches see a quarter of it) and moves slower, so that random crops keep it.
* **Sound.** The digit's English name spoken by espeak-ng (when installed) with a voice = accent x voice variant,
  a speaking rate of 140-220 words/min and a pitch of 25-75, trimmed of silence, shortened (by resampling) to at most
  0.9 s, placed at a random onset of 0.05-0.25 s; then a mix of white and brown noise at an SNR of 0-15 dB and a
  random level. Without espeak-ng, a documented synthetic per-class sound is used instead (a DTMF-like tone pair per
  digit, its pitch scaled by a per-"voice" factor and with a per-voice harmonic timbre); the manifest's
  ``sound_source`` says which. Why: the class is in the phonetic content, which every voice shares, while level,
  pitch, timbre, rate and noise vary, so raw log-mel statistics are not enough.
* **Split.** Train and test use different digit images (75 % / 25 % of each class's images, drawn with the seed)
  and different voices: the accents and the voice variants of the test voices are both absent from training
  (train: en-us, en-gb, en-gb-scotland, en-gb-x-rp, en-gb-x-gbclan x m1 m3 m5 m7 f1 f3 f5 klatt; test: en-029,
  en-us-nyc, en-gb-x-gbcwmd x m2 m4 m6 f2 f4 klatt2). A probe therefore measures generalisation to new writing and
  new speakers, not memorisation (``load_digits`` has no writer ids, so "different images" is the best available).
* **Timing.** 1.25 s clips at 8 fps (10 frames) and 16 kHz mono: a 1 s training window (8 frames) always overlaps
  most of the word. Classes are balanced (clip ``i`` has label ``i % 10``).
* **Determinism.** Every clip draws from its own generator seeded with ``(seed, split, index)``, so a set is the
  same whatever the number of worker processes, and any clip can be re-made alone.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import wave
from dataclasses import asdict, dataclass, field

import numpy as np

from ..utils_io import atomic_path, atomic_write_text

__all__ = ["AVDigitsSpec", "TRAIN_VOICES", "TEST_VOICES", "DIGIT_WORDS", "espeak_available", "make_avdigits",
           "render_clip"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan")
TEST_ACCENTS = ("en-029", "en-us-nyc", "en-gb-x-gbcwmd")
TRAIN_VARIANTS = ("m1", "m3", "m5", "m7", "f1", "f3", "f5", "klatt")
TEST_VARIANTS = ("m2", "m4", "m6", "f2", "f4", "klatt2")
TRAIN_VOICES = tuple(f"{a}+{v}" for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS)
TEST_VOICES = tuple(f"{a}+{v}" for a in TEST_ACCENTS for v in TEST_VARIANTS)
_SPLIT_IDS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class AVDigitsSpec:
    """Sizes and ranges of an AV-digits set (see the module docstring for why each is what it is)."""

    num_train: int = 600
    num_test: int = 200
    seed: int = 0
    frame_size: int = 36
    fps: int = 8
    duration: float = 1.25
    sampling_rate: int = 16000
    digit_size: int = 16
    speed_range: tuple[float, float] = (0.75, 2.0)
    num_distractors: int = 3
    pixel_noise: float = 6.0
    rate_range: tuple[int, int] = (140, 220)
    pitch_range: tuple[int, int] = (25, 75)
    onset_range: tuple[float, float] = (0.05, 0.25)
    max_word_duration: float = 0.9
    snr_db_range: tuple[float, float] = (0.0, 15.0)
    train_image_fraction: float = 0.75
    sound: str = "auto"  # "auto" (espeak-ng when installed), "espeak", "synthetic"
    train_voices: tuple[str, ...] = field(default=TRAIN_VOICES)
    test_voices: tuple[str, ...] = field(default=TEST_VOICES)

    def __post_init__(self):
        if self.num_train < 10 or self.num_test < 10:
            raise ValueError(f"AVDigitsSpec needs at least 10 clips per split (one per class), got "
                             f"num_train={self.num_train}, num_test={self.num_test}.")
        if self.sound not in ("auto", "espeak", "synthetic"):
            raise ValueError(f"AVDigitsSpec.sound must be 'auto', 'espeak' or 'synthetic', got {self.sound!r}.")
        if set(self.train_voices) & set(self.test_voices):
            raise ValueError("AVDigitsSpec: train and test voices must be disjoint.")
        if self.frame_size % 2 or self.digit_size >= self.frame_size:
            raise ValueError("AVDigitsSpec.frame_size must be even (H.264 4:2:0) and larger than digit_size.")

    @property
    def num_frames(self) -> int:
        return int(round(self.duration * self.fps))

    @property
    def num_samples(self) -> int:
        return int(round(self.duration * self.sampling_rate))


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def _espeak_version() -> str:
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else "espeak-ng"
    except (OSError, subprocess.SubprocessError):
        return "espeak-ng"


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _digit_pools(spec: AVDigitsSpec) -> tuple[np.ndarray, np.ndarray, dict[str, list[np.ndarray]]]:
    """(images (1797, 8, 8) in [0, 1], labels, {split: [image indices of class c]}): each class's images are split
    75/25 between train and test with the set's seed (never the same image in both)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng([spec.seed, 7])
    pools = {"train": [], "test": []}
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        cut = int(round(spec.train_image_fraction * len(idx)))
        pools["train"].append(np.sort(idx[:cut]))
        pools["test"].append(np.sort(idx[cut:]))
    return images, labels, pools


def _smooth_background(rng: np.random.Generator, size: int) -> np.ndarray:
    grid = rng.uniform(0, 160, size=(3, 3, 3))
    pos = np.linspace(0, 2, size)
    lo = np.minimum(pos.astype(int), 1)
    frac = (pos - lo)[:, None]
    rows = grid[lo] * (1 - frac[..., None]) + grid[lo + 1] * frac[..., None]  # (size, 3, 3)
    cols = rows[:, lo] * (1 - frac[None]) + rows[:, lo + 1] * frac[None]  # (size, size, 3)
    return cols.astype(np.float32)


def _bounce(start: float, velocity: float, steps: int, limit: float) -> np.ndarray:
    out, x, v = [], start, velocity
    for _ in range(steps):
        out.append(x)
        x += v
        if x < 0 or x > limit:
            v = -v
            x = min(max(x, 0.0), limit)
    return np.asarray(out)


def _render_frames(rng: np.random.Generator, image: np.ndarray, spec: AVDigitsSpec) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one digit image moving over clutter."""
    t, size, d = spec.num_frames, spec.frame_size, spec.digit_size
    background = _smooth_background(rng, size)
    scale = d // image.shape[0]
    sprite = np.kron(image, np.ones((scale, scale), dtype=np.float32))  # (d, d) ink in [0, 1]
    hue = rng.uniform(0, 1)
    colour = np.clip(np.abs(((hue * 6 + np.array([0, 4, 2])) % 6) - 3) - 1, 0, 1) * 155 + 100  # bright
    speed = rng.uniform(*spec.speed_range)
    angle = rng.uniform(0, 2 * np.pi)
    xs = _bounce(rng.uniform(0, size - d), speed * np.cos(angle), t, size - d)
    ys = _bounce(rng.uniform(0, size - d), speed * np.sin(angle), t, size - d)
    distractors = []
    for _ in range(spec.num_distractors):
        w, h = rng.integers(3, 10, size=2)
        distractors.append(dict(
            w=int(w), h=int(h), colour=rng.uniform(0, 255, 3),
            xs=_bounce(rng.uniform(0, size - w), rng.uniform(-2, 2), t, size - w),
            ys=_bounce(rng.uniform(0, size - h), rng.uniform(-2, 2), t, size - h),
        ))
    frames = np.empty((t, size, size, 3), dtype=np.uint8)
    for k in range(t):
        frame = background.copy()
        for box in distractors:
            x, y = int(round(box["xs"][k])), int(round(box["ys"][k]))
            region = frame[y:y + box["h"], x:x + box["w"]]
            region[:] = 0.3 * region + 0.7 * box["colour"]
        x, y = int(round(xs[k])), int(round(ys[k]))
        region = frame[y:y + d, x:x + d]
        alpha = sprite[..., None]
        region[:] = (1 - alpha) * region + alpha * colour
        frame += rng.normal(0, spec.pixel_noise, size=frame.shape)
        frames[k] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
    return frames


# ----------------------------------------------------------------------------------------------------------------
# Sound
# ----------------------------------------------------------------------------------------------------------------


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)


def _espeak_word(word: str, voice: str, rate: int, pitch: int, sampling_rate: int) -> np.ndarray:
    result = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", word],
        capture_output=True, timeout=30, check=False,
    )
    if result.returncode != 0 or len(result.stdout) < 100:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {result.stderr.decode(errors='replace')[:200]}")
    with wave.open(io.BytesIO(result.stdout)) as w:
        rate_in, width = w.getframerate(), w.getsampwidth()
        raw = w.readframes(10**9)
    if width != 2:
        raise RuntimeError(f"espeak-ng wrote {8 * width}-bit samples; expected 16-bit.")
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return _resample(samples, rate_in, sampling_rate)


def _synthetic_word(label: int, voice: str, rng: np.random.Generator, sampling_rate: int,
                    duration: float) -> np.ndarray:
    """The fallback per-class sound: a DTMF-like tone pair for the digit; the voice sets a pitch factor and a
    harmonic timbre (from a hash of its name), the rate sets the length."""
    low = (400.0, 560.0, 780.0)[label % 3]
    high = (1100.0, 1500.0, 2100.0, 2900.0)[label % 4]
    voice_rng = np.random.default_rng(abs(hash_voice(voice)))
    factor = voice_rng.uniform(0.85, 1.15)
    harmonics = voice_rng.uniform(0.0, 0.5, size=2)
    t = np.arange(int(duration * sampling_rate)) / sampling_rate
    wave_ = np.zeros_like(t)
    for f in (low, high):
        f = f * factor * rng.uniform(0.97, 1.03)
        wave_ += np.sin(2 * np.pi * f * t) + harmonics[0] * np.sin(4 * np.pi * f * t)
    envelope = np.sin(np.pi * np.clip(t / max(duration, 1e-3), 0, 1)) ** 0.5
    return (0.3 * wave_ * envelope).astype(np.float32)


def hash_voice(voice: str) -> int:
    # A stable hash (Python's hash() of a str changes between runs).
    value = 0
    for ch in voice.encode():
        value = (value * 131 + ch) % (2**31 - 1)
    return value


def _trim(samples: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > threshold * max(float(np.abs(samples).max()), 1e-6))
    return samples[loud[0]: loud[-1] + 1] if len(loud) else samples


def _brown_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.cumsum(rng.normal(0, 1, n))
    x -= np.linspace(x[0], x[-1], n)  # remove the drift so it stays centred
    return x / max(float(np.std(x)), 1e-6)


def _render_audio(rng: np.random.Generator, label: int, voice: str, sound: str, spec: AVDigitsSpec) -> tuple:
    rate = int(rng.integers(spec.rate_range[0], spec.rate_range[1] + 1))
    pitch = int(rng.integers(spec.pitch_range[0], spec.pitch_range[1] + 1))
    sr = spec.sampling_rate
    if sound == "espeak":
        word = _trim(_espeak_word(DIGIT_WORDS[label], voice, rate, pitch, sr))
    else:
        word = _synthetic_word(label, voice, rng, sr, duration=60.0 / rate * 1.2)
    limit = int(spec.max_word_duration * sr)
    if len(word) > limit:  # speak faster rather than cut the word
        word = _resample(word, len(word), limit)
    word = word / max(float(np.abs(word).max()), 1e-6)
    out = np.zeros(spec.num_samples, dtype=np.float64)
    onset = int(rng.uniform(*spec.onset_range) * sr)
    end = min(onset + len(word), len(out))
    out[onset:end] = word[: end - onset]
    signal_rms = float(np.sqrt(np.mean(word.astype(np.float64) ** 2)))
    snr_db = float(rng.uniform(*spec.snr_db_range))
    white_share = float(rng.uniform(0, 1))
    noise = white_share * rng.normal(0, 1, len(out)) + (1 - white_share) * _brown_noise(rng, len(out))
    noise *= signal_rms / max(float(np.sqrt(np.mean(noise**2))), 1e-9) / (10 ** (snr_db / 20))
    mix = out + noise
    level = float(rng.uniform(0.1, 0.5))
    mix *= level / max(float(np.abs(mix).max()), 1e-9)
    return mix.astype(np.float32), dict(rate=rate, pitch=pitch, snr_db=round(snr_db, 3), onset_s=onset / sr,
                                        word_s=round(len(word) / sr, 4))


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def _write_mp4(path: str, frames: np.ndarray, audio: np.ndarray, fps: int, sampling_rate: int) -> None:
    import av

    with atomic_path(path, suffix=".mp4") as tmp, av.open(tmp, "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "medium"})
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.codec_context.thread_count = 1  # single-threaded: the bytes do not depend on the machine
        stream = container.add_stream("aac", rate=sampling_rate, layout="mono")
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for start in range(0, len(audio), 1024):
            chunk = np.ascontiguousarray(audio[start:start + 1024][None])
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            af.sample_rate = sampling_rate
            af.pts = start
            for packet in stream.encode(af):
                container.mux(packet)
        for s in (video, stream):
            for packet in s.encode(None):
                container.mux(packet)


def render_clip(spec: AVDigitsSpec, split: str, index: int, sound: str) -> dict:
    """Frames, waveform and factors of clip ``index`` of ``split`` (the same whatever else is generated)."""
    images, labels, pools = _digit_pools(spec)
    rng = np.random.default_rng([spec.seed, _SPLIT_IDS[split], index])
    label = index % 10
    pool = pools[split][label]
    image_index = int(pool[rng.integers(len(pool))])
    voices = spec.train_voices if split == "train" else spec.test_voices
    voice = voices[int(rng.integers(len(voices)))]
    frames = _render_frames(rng, images[image_index], spec)
    audio, factors = _render_audio(rng, label, voice, sound, spec)
    return dict(frames=frames, audio=audio, label=label, image_index=image_index, voice=voice, **factors)


def _make_one(args) -> dict:
    spec, split, index, sound, root = args
    clip = render_clip(spec, split, index, sound)
    rel = os.path.join(split, str(clip["label"]), f"{split}_{index:05d}.mp4")
    _write_mp4(os.path.join(root, rel), clip["frames"], clip["audio"], spec.fps, spec.sampling_rate)
    return {"path": rel, "split": split, "index": index,
            **{k: v for k, v in clip.items() if k not in ("frames", "audio")}}


def make_avdigits(root: str, spec: AVDigitsSpec | None = None, workers: int = 1, progress: bool = False,
                  overwrite: bool = False) -> dict:
    """Write an AV-digits set under ``root`` (``train/<digit>/*.mp4``, ``test/<digit>/*.mp4``, ``manifest.json``)
    and return the manifest. A folder that already holds a set with the same spec is reused as is.

    Args:
        spec: sizes, ranges and the seed (:class:`AVDigitsSpec`).
        workers: processes writing clips in parallel (the result does not depend on it).
        overwrite: remake the set even when a matching one exists.
    """
    spec = spec or AVDigitsSpec()
    sound = spec.sound
    if sound == "auto":
        sound = "espeak" if espeak_available() else "synthetic"
    if sound == "espeak" and not espeak_available():
        raise RuntimeError("AVDigitsSpec.sound='espeak' but espeak-ng is not on PATH (apt-get install espeak-ng), "
                           "or use sound='synthetic'.")
    manifest_path = os.path.join(root, "manifest.json")
    spec_dict = json.loads(json.dumps(asdict(spec)))
    if os.path.exists(manifest_path) and not overwrite:
        with open(manifest_path) as f:
            existing = json.load(f)
        if existing.get("spec") == spec_dict and existing.get("sound") == sound:
            return existing
    for split in ("train", "test"):
        shutil.rmtree(os.path.join(root, split), ignore_errors=True)
        for c in range(10):
            os.makedirs(os.path.join(root, split, str(c)), exist_ok=True)
    jobs = [(spec, "train", i, sound, root) for i in range(spec.num_train)]
    jobs += [(spec, "test", i, sound, root) for i in range(spec.num_test)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            iterator = pool.imap(_make_one, jobs, chunksize=8)
            clips = _with_progress(iterator, len(jobs), progress)
    else:
        clips = _with_progress(map(_make_one, jobs), len(jobs), progress)
    manifest = {
        "spec": spec_dict, "sound": sound,
        "sound_source": _espeak_version() if sound == "espeak" else "synthetic tone pairs (espeak-ng not used)",
        "clips": clips,
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return manifest


def _with_progress(iterator, total: int, progress: bool) -> list:
    if not progress:
        return list(iterator)
    from tqdm.auto import tqdm

    return list(tqdm(iterator, total=total, desc="AV-digits", unit="clip"))
