"""Small audio helpers for building spectrogram datasets: reading, resampling, mixing, STFT.

Only numpy, soundfile and torch are used, so no audio toolkit is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from g2d.errors import G2DError


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """Read a sound file as float32 mono in [-1, 1] and its sample rate, so callers never see channels."""
    path = Path(path)
    if not path.is_file():
        raise G2DError(f"{path}: no such audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as error:
        raise G2DError(f"{path}: cannot read audio file ({error})") from error
    if data.shape[0] == 0:
        raise G2DError(f"{path}: audio file has no samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0), dtype=np.float32), int(rate)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample a 1-D signal by FFT (band-limited, treating it as periodic) to change its sample rate."""
    if rate_in <= 0 or rate_out <= 0:
        raise G2DError(f"resample: sample rates must be positive, got {rate_in} -> {rate_out}")
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise G2DError(f"resample: expected a 1-D signal, got shape {wave.shape}")
    if rate_in == rate_out or len(wave) == 0:
        return wave.astype(np.float32)
    n_in = len(wave)
    n_out = max(1, int(round(n_in * rate_out / rate_in)))
    spectrum = np.fft.rfft(wave)
    bins_out = n_out // 2 + 1
    kept = np.zeros(bins_out, dtype=np.complex128)
    keep = min(len(spectrum), bins_out)
    kept[:keep] = spectrum[:keep]
    if n_out < n_in and n_out % 2 == 0:
        kept[-1] = 0.0
    if n_out > n_in and n_in % 2 == 0:
        kept[n_in // 2] *= 0.5
    return (np.fft.irfft(kept, n=n_out) * (n_out / n_in)).astype(np.float32)


def noise_gain(signal_power: float, noise_power: float, snr_db: float) -> float:
    """The factor to multiply noise by so that signal_power / (gain**2 * noise_power) is snr_db in dB."""
    if noise_power <= 0.0:
        raise G2DError("mix_at_snr: the noise is silent (zero power), no gain reaches the requested SNR")
    return float(np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0))))


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add noise scaled so that 10*log10(P_signal/P_noise) equals snr_db, powers over the signal's length."""
    signal = np.asarray(signal, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.shape[0] < signal.shape[0]:
        raise G2DError(f"mix_at_snr: noise has {noise.shape[0]} samples, fewer than the signal's {signal.shape[0]}")
    noise = noise[: signal.shape[0]]
    gain = noise_gain(float(np.mean(signal**2)), float(np.mean(noise**2)), snr_db)
    return (signal + gain * noise).astype(np.float32)


def log_spectrogram(
    waves: torch.Tensor, n_fft: int, hop: int, floor: float = 1e-6, pad_mode: str = "reflect"
) -> torch.Tensor:
    """Batched log(floor + |STFT|) with a Hann window, centred frames, [N, L] -> [N, n_fft // 2 + 1, frames].

    ``pad_mode`` pads the signal ends for the centred frames: "reflect" (torch's default) or
    "constant" (zeros, librosa's default since 0.10).
    """
    if waves.dim() != 2:
        raise G2DError(f"log_spectrogram: expected waves of shape [N, L], got {tuple(waves.shape)}")
    waves = waves.to(torch.float32)
    window = torch.hann_window(n_fft, dtype=torch.float32, device=waves.device)
    spectrum = torch.stft(
        waves, n_fft=n_fft, hop_length=hop, window=window, center=True, pad_mode=pad_mode, return_complex=True
    )
    return torch.log(floor + spectrum.abs())


def repeat_to_length(wave: np.ndarray, length: int) -> np.ndarray:
    """The signal repeated end to end until it fills ``length`` samples (cut there), as the reference codes tile clips."""
    if len(wave) == 0:
        raise G2DError("repeat_to_length: the signal is empty")
    return np.resize(np.asarray(wave, dtype=np.float32), length)
