"""SigLIP models as Lookalike uses them: build, save, load, preprocess, embed.

A model directory is a plain Hugging Face checkpoint — ``config.json`` + ``model.safetensors``
(``SiglipModel``), the tokenizer files and ``preprocessor_config.json`` — so a real pretrained
SigLIP directory loads the same way as one trained here. Lookalike adds ``lookalike.json``
(version, metrics, lineage) beside them.

Preprocessing is numpy + PIL (transformers 5's ``SiglipImageProcessor`` needs torchvision):
resize to the model's square input, rescale to [0, 1], normalise with the checkpoint's mean/std.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from lookalike.errors import ConfigError

# Named architectures initialised from scratch. The two real shapes match Google's checkpoints.
ARCHITECTURES: dict[str, dict] = {
    "tiny": dict(hidden=32, layers=1, heads=2, mlp=64, image_size=32, patch=8, text_layers=1),
    # The CPU default: about 0.5M parameters with a 4,000-token vocabulary. 48 px with 8 px patches (36 image tokens) and one
    # text layer trained best per CPU-minute on real photos; width and depth cost more than they
    # give at that budget (benchmarks/real_photo_quality.py, docs/models.md).
    "small": dict(hidden=64, layers=2, heads=2, mlp=256, image_size=48, patch=8, text_layers=1),
    "siglip-base-patch16-224": dict(hidden=768, layers=12, heads=12, mlp=3072, image_size=224, patch=16,
                                    text_layers=12),
    "siglip-base-patch16-256-multilingual": dict(hidden=768, layers=12, heads=12, mlp=3072, image_size=256,
                                                 patch=16, text_layers=12),
}
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def build_config(name: str, *, vocab_size: int, max_text_length: int):
    """A ``SiglipConfig`` for a named architecture and a tokenizer of ``vocab_size`` tokens."""
    from transformers import SiglipConfig

    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; named ones: {', '.join(ARCHITECTURES)} "
                         f"(or give a Hugging Face checkpoint directory as model.init)")
    a = ARCHITECTURES[name]
    text = dict(vocab_size=vocab_size, hidden_size=a["hidden"], intermediate_size=a["mlp"],
                num_hidden_layers=a["text_layers"], num_attention_heads=a["heads"],
                max_position_embeddings=max_text_length, pad_token_id=0, bos_token_id=None, eos_token_id=1,
                projection_size=a["hidden"])
    vision = dict(hidden_size=a["hidden"], intermediate_size=a["mlp"], num_hidden_layers=a["layers"],
                  num_attention_heads=a["heads"], image_size=a["image_size"], patch_size=a["patch"])
    return SiglipConfig(text_config=text, vision_config=vision)


def init_siglip_head(model) -> None:
    """The SigLIP paper's initialisation of the loss head: t' = log 10, b = -10 (Zhai et al. 2023, §3).

    A fresh ``SiglipModel`` starts at t' = 0, b = 0, which wastes the first steps on the
    prior that almost every pair in a batch is negative.
    """
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(10.0)))
        model.logit_bias.fill_(-10.0)


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """A SentencePiece-style Unigram tokenizer trained offline on ``texts``, as a fast tokenizer.

    Metaspace pre-tokenisation keeps CJK titles (no spaces) tokenisable; every text ends with
    ``</s>``, as SigLIP's own tokenizer does.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], unk_token=UNK,
                                      max_piece_length=12, shrinking_factor=0.75,
                                      show_progress=False)
    tk.train_from_iterator([t for t in texts if t], trainer=trainer)
    tk = _canonical_unigram(tk)
    tk.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, tk.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=max_length, padding_side="right", truncation_side="right")


def _canonical_unigram(tk):
    """The trained vocabulary in a fixed order, so the same texts always give the same token ids.

    The Unigram trainer sums scores in parallel and breaks ties in hash order: two runs on the
    same texts agree on the pieces but not on their ids (which would make training irreproducible
    and ranks of one DDP run disagree). Scores are rounded past that noise and pieces sorted by
    (score, piece) after the special tokens.
    """
    from tokenizers import Tokenizer

    data = json.loads(tk.to_str())
    vocab = data["model"]["vocab"]
    specials, pieces = vocab[:3], vocab[3:]
    pieces = sorted(([p, round(score, 9)] for p, score in pieces), key=lambda ps: (-ps[1], ps[0]))
    data["model"]["vocab"] = specials + pieces
    return Tokenizer.from_str(json.dumps(data))


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing of a checkpoint (``preprocessor_config.json``)."""

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Keep the aspect ratio: resize the longest side to ``size`` and pad the rest with the photo's
    # corner colour (a product photo's background) instead of stretching. Saved as
    # ``lookalike_pad`` in preprocessor_config.json so embedding preprocesses as training did.
    pad: bool = False

    def to_hf(self) -> dict:
        return {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
                "size": {"height": self.size, "width": self.size}, "resample": 2, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(self.mean),
                "image_std": list(self.std), "do_convert_rgb": True, "lookalike_pad": self.pad}

    @classmethod
    def from_hf(cls, data: dict) -> "Preprocess":
        size = data.get("size", {})
        side = size.get("height") or size.get("shortest_edge") or 224
        return cls(int(side), tuple(data.get("image_mean", (0.5,) * 3)), tuple(data.get("image_std", (0.5,) * 3)),
                   bool(data.get("lookalike_pad", False)))

    def _square(self, img: Image.Image) -> Image.Image:
        if not self.pad or img.width == img.height:
            return img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        scale = self.size / max(img.width, img.height)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        canvas = Image.new("RGB", (self.size, self.size), img.getpixel((0, 0)))
        canvas.paste(img.resize((w, h), Image.Resampling.BILINEAR), ((self.size - w) // 2, (self.size - h) // 2))
        return canvas

    def decode(self, images: list[bytes]) -> np.ndarray:
        """JPEG/PNG bytes → (N, H, W, 3) uint8 at the model's input size."""
        out = np.empty((len(images), self.size, self.size, 3), dtype=np.uint8)
        for i, data in enumerate(images):
            out[i] = np.asarray(self._square(Image.open(io.BytesIO(data)).convert("RGB")))
        return out

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 → (N, 3, H, W) float32 normalised."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass
class LoadedModel:
    model: "torch.nn.Module"  # SiglipModel, eval mode
    tokenizer: object
    preprocess: Preprocess
    max_text_length: int
    version: str
    path: Path


def quiet_transformers() -> None:
    """No weight-loading progress bars and no config chatter in job logs (real errors still raise)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def save_model(model, tokenizer, preprocess: Preprocess, out: Path, metadata: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocess.to_hf(), indent=2))
    (out / "lookalike.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))


def load_model(path: str | Path, *, version: str | None = None) -> LoadedModel:
    """Load a Hugging Face SigLIP directory (ours or a real pretrained one) for inference."""
    from transformers import AutoTokenizer, SiglipModel

    quiet_transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    model = SiglipModel.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = lowercase_if_expected(AutoTokenizer.from_pretrained(path))
    pre = Preprocess.from_hf(json.loads((path / "preprocessor_config.json").read_text())) \
        if (path / "preprocessor_config.json").exists() else Preprocess(model.config.vision_config.image_size)
    meta = json.loads((path / "lookalike.json").read_text()) if (path / "lookalike.json").exists() else {}
    return LoadedModel(model, tokenizer, pre, int(model.config.text_config.max_position_embeddings),
                       version or meta.get("version") or path.name, path)


def lowercase_if_expected(tokenizer):
    """SigLIP 2's Gemma tokenizer was trained on lowercased text, and its checkpoints expect it lowercased
    (their tokenizer does not do it): a lowercasing step is put in front of its normaliser, saved with
    it, so training, embedding and every later load agree. Any other tokenizer is returned as it is."""
    if "gemma" not in type(tokenizer).__name__.lower():
        return tokenizer
    from tokenizers import normalizers

    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    if current is not None and "Lowercase" in repr(current):
        return tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), current] if current else
                                              [normalizers.Lowercase()])
    return tokenizer


def tokenize(tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """(N, max_length) token ids, padded to max_length: SigLIP pools the last position."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"]


@torch.inference_mode()
def embed_pixels(model, pixels: np.ndarray, preprocess: Preprocess, batch_size: int = 256,
                 bf16: bool = False) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, D) float32 L2-normalised image embeddings."""
    device = next(model.parameters()).device
    outs = []
    for start in range(0, len(pixels), batch_size):
        x = preprocess.normalise(torch.from_numpy(pixels[start:start + batch_size])).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = model.get_image_features(pixel_values=x).pooler_output
        outs.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    dim = model.config.vision_config.hidden_size
    return np.concatenate(outs) if outs else np.zeros((0, dim), dtype=np.float32)


def embed_images(loaded: LoadedModel, images: list[bytes], batch_size: int = 256) -> np.ndarray:
    """Image bytes → (N, D) float32 L2-normalised embeddings: the pure core of the embed stage."""
    return embed_pixels(loaded.model, loaded.preprocess.decode(images), loaded.preprocess, batch_size)


@torch.inference_mode()
def embed_texts(loaded: LoadedModel, texts: list[str], batch_size: int = 512) -> np.ndarray:
    outs = []
    for start in range(0, len(texts), batch_size):
        ids = tokenize(loaded.tokenizer, texts[start:start + batch_size], loaded.max_text_length)
        feats = loaded.model.get_text_features(input_ids=ids.to(next(loaded.model.parameters()).device)).pooler_output
        outs.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, loaded.model.config.text_config.hidden_size), np.float32)
