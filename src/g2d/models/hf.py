"""An encoder backed by a Hugging Face ``transformers`` model read from a local folder, never downloaded.

``name: hf`` with ``path: DIR`` loads ``AutoModel.from_pretrained(DIR, local_files_only=True)``
with the hub set offline, so a missing or incomplete folder is an error, not a download. The
modality's batch goes to the model's main input (``input_ids`` for a ``tokens`` modality with
its attention mask, ``input_values`` for a waveform ``vector``, ``pixel_values`` for an
``image``), and the feature is the last hidden state pooled over real tokens or frames
(``pooling: mean``), the first token (``first``, e.g. BERT's [CLS]) or the model's own pooled
output (``pooler``). ``transformers`` is the optional extra ``g2d[hf]``.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from g2d.config import EncoderConfig
from g2d.data.base import ModalitySpec
from g2d.data.hf_local import import_transformers, model_folder
from g2d.errors import G2DError

HF_KINDS = ("tokens", "vector", "image")
HF_POOLINGS = ("mean", "first", "pooler")
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class HFEncoder(nn.Module):
    """A transformers model as a g2d encoder: one modality's batch in, pooled features ``[B, out_dim]`` out."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.input_name = model.main_input_name
        self.takes_mask = "attention_mask" in inspect.signature(model.forward).parameters
        self.out_dim = 0

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        inputs = {self.input_name: x}
        if mask is not None and self.takes_mask:
            inputs["attention_mask"] = mask.long()
        output = self.model(**inputs)
        if self.pooling == "pooler":
            pooled = getattr(output, "pooler_output", None)
            if pooled is None:
                raise G2DError(f"{type(self.model).__name__} has no pooled output; use pooling mean or first")
            return pooled.flatten(1)
        hidden = output.last_hidden_state
        if hidden.dim() == 4:  # convolutional models: [B, C, H, W]
            return hidden.mean(dim=(2, 3))
        if self.pooling == "first":
            return hidden[:, 0]
        if mask is not None and hidden.shape[1] == mask.shape[1]:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return hidden.mean(dim=1)


def example_input(spec: ModalitySpec) -> tuple[Tensor, Tensor | None]:
    """One all-zero sample of the modality, to measure the feature size by a forward pass."""
    if spec.kind == "tokens":
        return torch.zeros(1, *spec.shape, dtype=torch.long), torch.ones(1, *spec.shape, dtype=torch.bool)
    return torch.zeros(1, *spec.shape), None


def build_hf(config: EncoderConfig, spec: ModalitySpec, prefix: str) -> nn.Module:
    """The model saved in ``config.path``, wrapped as an encoder; its feature size found by one forward pass."""
    key = f"{prefix}.path"
    if config.pooling not in HF_POOLINGS:
        raise G2DError(f"{prefix}.pooling: {config.pooling!r} is not one of {', '.join(HF_POOLINGS)} for the hf encoder")
    folder = model_folder(config.path, key, MODEL_FILES, "model weights")
    if not (folder / "config.json").is_file():
        raise G2DError(f"{key}: {folder} holds no config.json; save the model there with save_pretrained")
    transformers = import_transformers(key)
    try:
        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # a bad folder fails in many ways (missing files, torn weights, unknown model type)
        raise G2DError(f"{key}: cannot load the transformers model in {folder} ({str(exc).splitlines()[0]})") from exc
    # Checkpoints saved in half precision load as such in recent transformers; g2d trains in
    # fp32 (the fast path's autocast picks bf16 where it applies), and the upcast is exact.
    model.float()
    encoder = HFEncoder(model, config.pooling)
    model.eval()
    with torch.no_grad():
        x, mask = example_input(spec)
        try:
            encoder.out_dim = int(encoder(x, mask).shape[-1])
        except G2DError as exc:
            raise G2DError(f"{prefix}.pooling: {exc} ({folder})") from exc
        except Exception as exc:  # a model given input of the wrong form fails in many ways
            raise G2DError(f"{key}: the model in {folder} ({type(model).__name__}, input {encoder.input_name}) does "
                           f"not take this {spec.kind} modality of shape {spec.shape} ({str(exc).splitlines()[0]})") from exc
    model.train()
    return encoder
