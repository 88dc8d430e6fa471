"""Local Hugging Face folders: ``transformers`` imported with the hub offline, folders checked before
anything loads, and saved tokenizers. Nothing is ever downloaded.

The data layer tokenizes text columns with these; the ``hf`` encoder (``g2d.models.hf``) loads its
model folder through the same checks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from g2d.errors import G2DError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


def import_transformers(key: str) -> Any:
    """``transformers`` with the hub offline; a clear error when the optional extra is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError as exc:
        raise G2DError(f"{key}: the hf encoder needs the transformers package: pip install 'g2d[hf]'") from exc
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def model_folder(path: str | None, key: str, needs: tuple[str, ...], what: str) -> Path:
    """``path`` as a folder holding ``config.json``-style files ``needs`` (any one of them); else one error."""
    if not path:
        raise G2DError(f"{key}: the hf encoder needs the local folder of a saved transformers model")
    folder = Path(path)
    if not folder.is_dir():
        raise G2DError(f"{key}: {folder} is not a folder (a transformers model saved with save_pretrained)")
    if not any((folder / name).is_file() for name in needs):
        raise G2DError(f"{key}: {folder} holds no {what} (looked for {', '.join(needs)}); "
                       "save the model or tokenizer there with save_pretrained, nothing is downloaded")
    return folder


def load_tokenizer(path: str | None, key: str) -> Any:
    """The tokenizer saved in the folder ``path`` (its vocabulary files must be there)."""
    folder = model_folder(path, key, TOKENIZER_FILES, "tokenizer vocabulary")
    transformers = import_transformers(key)
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # as for models: missing files, torn vocabularies, unknown tokenizer classes
        raise G2DError(f"{key}: cannot load the tokenizer in {folder} ({str(exc).splitlines()[0]})") from exc
