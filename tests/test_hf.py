"""Hugging Face encoders from local folders: tiny text, audio and image models built here, saved, trained with G²D."""

import csv
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from safetensors.torch import load_file

from g2d.cli import main
from g2d.config import load_config
from g2d.data import load_dataset
from g2d.errors import G2DError
from g2d.models.multimodal import MultimodalModel
from g2d.runs.experiment import run

transformers = pytest.importorskip("transformers", reason="the hf encoder needs transformers (pip install 'g2d[hf]')")

WORDS = [["red", "apple", "fire"], ["green", "leaf", "grass"], ["blue", "sea", "sky"]]
FILLER = ["the", "a", "is", "on", "very"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
ROWS = 48
RATE = 8000


def save_text_model(folder: Path) -> None:
    """A one-layer BERT and a word-level tokenizer over this file's vocabulary (no download anywhere)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {word: index for index, word in enumerate(SPECIALS + FILLER + [w for ws in WORDS for w in ws])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                                   cls_token="[CLS]", sep_token="[SEP]")
    wrapped.save_pretrained(str(folder))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(folder))


def save_audio_model(folder: Path) -> None:
    config = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4),
                                         conv_kernel=(10, 8), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
    torch.manual_seed(1)
    transformers.Wav2Vec2Model(config).save_pretrained(str(folder))


def save_image_model(folder: Path) -> None:
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    image_size=16, patch_size=8, num_channels=3)
    torch.manual_seed(2)
    transformers.ViTModel(config).save_pretrained(str(folder))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three tiny saved models and a CSV whose rows pair a sentence, a tone and a picture with one of 3 labels."""
    root = tmp_path_factory.mktemp("hf")
    for name, save in (("text_model", save_text_model), ("audio_model", save_audio_model), ("image_model", save_image_model)):
        (root / name).mkdir()
        save(root / name)
    rng = np.random.default_rng(0)
    rows = []
    for row in range(ROWS):
        label = row % 3
        words = [rng.choice(WORDS[label]) if rng.random() < 0.7 else rng.choice(FILLER) for _ in range(rng.integers(2, 7))]
        seconds = np.arange(RATE // 10) / RATE
        soundfile.write(root / f"tone{row}.wav", np.sin(2 * np.pi * (300 + 400 * label) * seconds) * 0.5, RATE)
        pixels = np.zeros((16, 16, 3), dtype=np.uint8)
        pixels[:, :, label] = rng.integers(100, 255)
        Image.fromarray(pixels).save(root / f"picture{row}.png")
        rows.append([" ".join(words), f"tone{row}.wav", f"picture{row}.png", str(label)])
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "audio", "image", "label"])
        writer.writerows(rows)
    return root


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "dataset.name=csv", f"dataset.root={root / 'index.csv'}", "dataset.options.text_columns=[text]",
        f"dataset.options.tokenizer={root / 'text_model'}", "dataset.options.audio_input=waveform",
        "dataset.options.audio_seconds=0.1", f"dataset.options.sample_rate={RATE}", "dataset.options.image_size=16",
        f"model.encoders.text={{name: hf, path: {root / 'text_model'}}}",
        f"model.encoders.audio={{name: hf, path: {root / 'audio_model'}}}",
        f"model.encoders.image={{name: hf, path: {root / 'image_model'}, pooling: pooler}}",
        "trainer.epochs=2", "trainer.batch_size=8", "trainer.progress=false", "optim.lr=0.01",
        f"out={out / 'run'}", f"teachers.root={out / 'teachers'}", *extra,
    ]


def test_text_column_becomes_token_ids_with_a_mask(corpus):
    config = load_config(None, overrides(corpus, corpus))
    data = load_dataset(config.dataset)
    assert data.modalities["text"].kind == "tokens" and data.modalities["audio"].kind == "vector"
    assert data.modalities["audio"].shape == (RATE // 10,)
    train = data.splits["train"]
    assert train["text"].dtype == torch.int64 and train["text.mask"].dtype == torch.bool
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(corpus / "text_model"))
    with open(corpus / "index.csv") as handle:
        sentences = [row["text"] for row in csv.DictReader(handle)]
    expected = [tokenizer(s)["input_ids"] for s in sentences]
    rows = torch.cat([data.splits[s]["text"] for s in ("train", "val", "test")])
    masks = torch.cat([data.splits[s]["text.mask"] for s in ("train", "val", "test")])
    assert sorted(tuple(r[m].tolist()) for r, m in zip(rows, masks)) == sorted(tuple(e) for e in expected)
    assert masks.sum(dim=1).max() == rows.shape[1]


def test_g2d_trains_three_hf_encoders_end_to_end_offline(corpus, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("g2d tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    metrics = run(load_config(None, overrides(corpus, tmp_path)))
    assert metrics["method"] == "g2d" and metrics["modalities"] == ["text", "audio", "image"]
    assert set(metrics["test"]["per_modality"]) == {"text", "audio", "image"} == set(metrics["teachers"])
    assert metrics["smp"]["enabled"]
    first = metrics["smp"]["ranking"][0]
    start = load_file(str(corpus / f"{first}_model" / "model.safetensors"))
    student = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    assert any(not torch.equal(student[f"encoders.{first}.model.{k}"], v) for k, v in start.items())
    start = load_file(str(corpus / "text_model" / "model.safetensors"))
    teacher = load_file(str(tmp_path / "teachers" / "teacher_text" / "teacher.safetensors"))
    assert any(not torch.equal(teacher[f"encoders.text.model.{k}"], v) for k, v in start.items())


def test_frozen_hf_encoders_keep_the_folder_weights_bit_for_bit(corpus, tmp_path):
    frozen = [f"model.encoders.{m}={{name: hf, path: {corpus / (m + '_model')}, freeze: true}}" for m in ("text", "audio")]
    run(load_config(None, overrides(corpus, tmp_path, *frozen, "trainer.epochs=1")))
    for modality in ("text", "audio"):
        saved = load_file(str(corpus / f"{modality}_model" / "model.safetensors"))
        for path in (tmp_path / "run" / "checkpoints" / "last.safetensors",
                     tmp_path / "teachers" / f"teacher_{modality}" / "teacher.safetensors"):
            state = load_file(str(path))
            assert all(torch.equal(state[f"encoders.{modality}.model.{k}"], v) for k, v in saved.items()), path


@pytest.mark.parametrize("fusion", ["sum", "concat", "film", "gated", "cross_attention"])
def test_every_fusion_takes_an_hf_encoder(corpus, tmp_path, fusion):
    config = load_config(None, overrides(corpus, tmp_path, "method.name=agm", f"model.fusion={fusion}",
                                         "dataset.modalities=[text,image]", "trainer.epochs=1"))
    assert run(config)["fusion"] == fusion


def test_mean_over_real_tokens_ignores_padding(corpus):
    config = load_config(None, overrides(corpus, corpus, "dataset.modalities=[text,image]"))
    data = load_dataset(config.dataset)
    encoder = MultimodalModel(data.modalities, config.model, 3).encoders["text"].eval()
    ids = torch.tensor([[2, 5, 9, 3]])
    padded = torch.tensor([[2, 5, 9, 3, 0, 0]])
    with torch.no_grad():
        short = encoder(ids, torch.ones(1, 4, dtype=torch.bool))
        long = encoder(padded, torch.tensor([[True] * 4 + [False] * 2]))
    torch.testing.assert_close(short, long)


@pytest.mark.parametrize(
    "setup, encoder, fragment",
    [
        (None, "{name: hf, path: MISSING}", "is not a folder"),
        ("config_only", "{name: hf, path: FOLDER}", "holds no model weights"),
        ("broken_weights", "{name: hf, path: FOLDER}", "cannot load the transformers model"),
        ("audio", "{name: hf, path: FOLDER, pooling: pooler}", "no pooled output"),
        ("audio", "{name: hf, path: FOLDER, pooling: max}", "model.encoders.image.pooling"),
        (None, "{name: hf}", "model.encoders.image.path"),
        (None, "{name: hf, path: TEXT}", "does not take this image modality"),
    ],
)
def test_missing_or_incomplete_model_folder_is_one_line(corpus, tmp_path, capsys, setup, encoder, fragment):
    folder = tmp_path / "model"
    if setup is not None:
        folder.mkdir()
        (folder / "config.json").write_text((corpus / "audio_model" / "config.json").read_text())
    if setup == "broken_weights":
        (folder / "model.safetensors").write_bytes(b"not weights")
    if setup == "audio":
        (folder / "model.safetensors").write_bytes((corpus / "audio_model" / "model.safetensors").read_bytes())
    spec = encoder.replace("MISSING", str(tmp_path / "nowhere")).replace("FOLDER", str(folder))
    spec = spec.replace("TEXT", str(corpus / "text_model"))
    args = [a for a in overrides(corpus, tmp_path, "dataset.modalities=[audio,image]") if not a.startswith("model.encoders.image")]
    if setup == "audio" and "max" not in encoder:
        args = [a if not a.startswith("model.encoders.audio") else f"model.encoders.audio={spec}" for a in args]
    else:
        args.append(f"model.encoders.image={spec}")
    config = tmp_path / "hf.yaml"
    config.write_text("method: {name: g2d}\n")
    assert main(["train", str(config), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("g2d: error:") and "\n" not in err and fragment in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "teachers").exists()


def test_text_needs_a_tokenizer_folder_with_a_vocabulary(corpus, tmp_path):
    args = overrides(corpus, tmp_path, f"dataset.options.tokenizer={corpus / 'audio_model'}")
    with pytest.raises(G2DError, match="holds no tokenizer vocabulary"):
        load_dataset(load_config(None, args).dataset)
    args = [a for a in overrides(corpus, tmp_path) if not a.startswith("dataset.options.tokenizer")]
    with pytest.raises(G2DError, match="dataset.options.tokenizer"):
        load_dataset(load_config(None, args).dataset)
    with pytest.raises(G2DError, match="text_columns: .* has no plain column 'caption'"):
        load_dataset(load_config(None, overrides(corpus, tmp_path, "dataset.options.text_columns=[caption]")).dataset)


def test_without_transformers_the_error_names_the_extra(corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    config = load_config(None, overrides(corpus, corpus, "dataset.modalities=[image]"))
    with pytest.raises(G2DError, match=r"g2d\[hf\]"):
        MultimodalModel({"image": load_dataset(config.dataset).modalities["image"]}, config.model, 3)


def test_tokens_modality_needs_the_hf_encoder(corpus):
    config = load_config(None, overrides(corpus, corpus, "model.encoders.text={name: auto}"))
    data = load_dataset(config.dataset)
    with pytest.raises(G2DError, match="model.encoders.text.name: a tokens modality has no automatic encoder"):
        MultimodalModel(data.modalities, config.model, 3)



def test_half_precision_checkpoint_is_upcast_exactly(corpus, tmp_path):
    from g2d.config import EncoderConfig
    from g2d.data.base import ModalitySpec
    from g2d.models.encoders import build_encoder

    transformers.AutoModel.from_pretrained(str(corpus / "text_model")).half().save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in saved.values())
    encoder = build_encoder(EncoderConfig(name="hf", path=str(tmp_path)), ModalitySpec("tokens", (6,)), "model.encoder.name")
    state = encoder.model.state_dict()
    assert all(state[k].dtype == torch.float32 and torch.equal(state[k], v.float()) for k, v in saved.items())
    ids, mask = torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.bool)
    assert encoder(ids, mask).dtype == torch.float32
