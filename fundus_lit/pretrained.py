"""Load an exported model (``fundus-lit export``) and embed or classify fundus photographs.

An export folder is self-contained: ``model.safetensors`` (the dual encoder's weights, read
without unpickling), ``config.json`` (what rebuilds the towers), ``tokenizer/`` and
``text_config/`` (the text model's transformers config), so neither the recipe, Lightning, the
training checkpoint nor the original text-model folder is needed where the model is used::

    model = fundus_lit.load_pretrained("exports/flair")
    probs = model.zero_shot(["a.png", "b.png"], ["normal", "glaucoma", "diabetic retinopathy"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.data.sources import read_rgb
from fundus_lit.data.transforms import ImagePipeline
from fundus_lit.eval.zeroshot import ZeroShot
from fundus_lit.models.dual_encoder import DualEncoder
from fundus_lit.models.saved import TOKENIZER, load_saved_encoder

ImageInput = str | Path | Image.Image | Tensor
Prompts = str | Mapping[str, Sequence[str]] | Sequence[Sequence[str]]


class _GivenPrompts(ZeroShot):
    """Zero-shot prototypes from the caller's prompts per class instead of the dictionary's:
    averaging and re-normalising stay those of the project's evaluation."""

    def __init__(self, classes: list[str], prompts: list[list[str]]) -> None:
        super().__init__(classes)
        self.given = dict(zip(classes, prompts))

    def prompts(self, name: str) -> list[str]:
        return self.given[name]


def _class_prompts(classes: list[str], prompts: Prompts | None) -> ZeroShot:
    """The prototype builder for ``prompts``: None = the evaluation's knowledge prompts, a string
    = a template with ``[CLS]`` (filled with the class name and its descriptions, as in
    evaluation), a mapping or sequence = the prompt texts of each class."""
    if prompts is None:
        return ZeroShot(classes)
    if isinstance(prompts, str):
        if "[CLS]" not in prompts:
            raise ValueError(f"a prompt template needs a [CLS] placeholder, got {prompts!r}")
        return ZeroShot(classes, template=prompts)
    if isinstance(prompts, Mapping):
        missing = [c for c in classes if c not in prompts]
        if missing:
            raise ValueError(f"prompts has no entry for class(es) {missing}")
        rows = [prompts[c] for c in classes]
    else:
        rows = list(prompts)
        if len(rows) != len(classes):
            raise ValueError(f"{len(rows)} prompt lists for {len(classes)} classes")
    rows = [[p] if isinstance(p, str) else list(p) for p in rows]
    empty = [c for c, row in zip(classes, rows) if not row]
    if empty:
        raise ValueError(f"no prompts for class(es) {empty}")
    return _GivenPrompts(classes, rows)


class PretrainedDualEncoder(nn.Module):
    """An exported dual encoder with its tokenizer and image preprocessing, in eval mode.

    Images are prepared as evaluation prepares them (field-of-view crop when the export says so,
    aspect-preserving pad-resize to ``image_size``, uint8; the vision tower normalises), texts
    are tokenised with the exported tokenizer at the training ``max_length``. Every ``encode_*``
    returns L2-normalised embeddings (N, D) on the model's device.
    """

    def __init__(
        self,
        encoder: DualEncoder,
        tokenizer: Any,
        max_length: int,
        crop_fov: bool = True,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_size = encoder.image_size
        resize = (config or {}).get("preprocessing", {}).get("resize", "pad_center")
        self.pipeline = ImagePipeline(encoder.image_size, crop_fov, None, resize)
        self.config = dict(config or {})
        self.requires_grad_(False)
        self.eval()

    def _require_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise DataError(
                "this model was imported without its tokenizer, so it embeds images only; "
                "re-run fundus-lit import with --tokenizer DIR (the text model's local folder, "
                "e.g. Bio_ClinicalBERT) to embed text"
            )

    @property
    def device(self) -> torch.device:
        return self.encoder.logit_scale.device

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """(N, 3, S, S) pixels. Paths and PIL images go through the evaluation pipeline (paths
        decoded as evaluation decodes them); a tensor must already be such a batch (or one
        image), uint8 or float in [0, 1], as a FundusDataModule or :attr:`pipeline` yields."""
        if isinstance(images, Tensor):
            return self._check_tensor(images.unsqueeze(0) if images.ndim == 3 else images)
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        pixels = [self._prepare(image) for image in images]
        if not pixels:
            raise ValueError("no images given")
        return torch.stack(pixels)

    def _prepare(self, image: ImageInput) -> Tensor:
        if isinstance(image, Tensor):
            return self._check_tensor(image.unsqueeze(0))[0]
        if isinstance(image, Image.Image):
            return self.pipeline(image.convert("RGB"))
        if isinstance(image, (str, Path)):
            return self.pipeline(read_rgb(Path(image), "encode_image", target=self.image_size))
        raise TypeError(f"expected a path, PIL image or tensor, got {type(image).__name__}")

    def _check_tensor(self, images: Tensor) -> Tensor:
        """A tensor is taken as prepared pixels; one of another size or range would be embedded
        silently wrong, so it is refused with what to pass instead."""
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"an image tensor must be prepared pixels (N, 3, {size}, {size}), got "
                f"{tuple(images.shape)}; pass PIL images or paths to have them prepared"
            )
        if images.is_floating_point() and images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError(
                "a float image tensor must hold values in [0, 1] (or pass uint8 0-255 pixels)"
            )
        return images

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        """Embeddings (N, D) of prepared pixels (N, 3, S, S), on the model's device."""
        return self.encoder.encode_image(pixels.to(self.device))["emb"]

    @torch.no_grad()
    def encode_image(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64
    ) -> Tensor:
        """L2-normalised image embeddings (N, D), ``batch_size`` images per forward pass."""
        if isinstance(images, Tensor):
            pixels = self.preprocess(images)
            return torch.cat([self(chunk) for chunk in pixels.split(batch_size)])
        items = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
        if not items:
            raise ValueError("no images given")
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        return torch.cat([self(self.preprocess(chunk)) for chunk in chunks])

    @torch.no_grad()
    def encode_text(self, texts: str | Sequence[str], batch_size: int = 256) -> Tensor:
        """L2-normalised text embeddings (N, D), tokenised as in training (``max_length``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts given")
        self._require_tokenizer()
        rows = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
            rows.append(self.encoder.encode_text(ids, mask)["emb"])
        return torch.cat(rows)

    def class_embeddings(
        self, class_names: Sequence[str], prompts: Prompts | None = None
    ) -> Tensor:
        """(C, D) class prototypes, built like the project's zero-shot evaluation: the mean of the
        normalised embeddings of each class's prompts, re-normalised. Without ``prompts`` a class
        uses ``"A fundus photograph of <name>"`` and one prompt per description the built-in
        knowledge dictionary has for it."""
        builder = _class_prompts(list(class_names), prompts)
        self._require_tokenizer()
        return builder.prototypes(self.encoder, self.tokenizer, self.max_length)

    @torch.no_grad()
    def zero_shot(
        self,
        images: ImageInput | Sequence[ImageInput],
        class_names: Sequence[str],
        prompts: Prompts | None = None,
    ) -> Tensor:
        """(N, C) class probabilities, columns in the order of ``class_names``: softmax of the
        learned logit scale times the cosine similarity to each class prototype."""
        image_emb = self.encode_image(images)
        prototypes = self.class_embeddings(class_names, prompts)
        logits = self.encoder.scale() * image_emb.float() @ prototypes.float().t()
        return logits.softmax(dim=-1)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        class_names: Sequence[str],
        prompts: Prompts | None = None,
    ) -> list[str]:
        """The most probable class name of each image."""
        best = self.zero_shot(images, class_names, prompts).argmax(dim=-1)
        return [class_names[i] for i in best.tolist()]


def load_pretrained(
    path: str | Path, device: str | torch.device = "cpu", crop_fov: bool | None = None
) -> PretrainedDualEncoder:
    """The dual encoder exported into folder ``path`` by ``fundus-lit export``, on ``device``.

    Args:
        path: Export folder.
        device: Where the model runs.
        crop_fov: Crop the black border before resizing; defaults to what the export recorded.
    """
    folder = Path(path)
    encoder, config = load_saved_encoder(folder)
    text = encoder.config.text
    tokenizer = None  # an import without --tokenizer: the image side only
    if (folder / TOKENIZER).is_dir():
        tokenizer = load_tokenizer(str(folder / TOKENIZER), text.trust_remote_code)
    if crop_fov is None:
        crop_fov = bool(config.get("preprocessing", {}).get("crop_fov", True))
    model = PretrainedDualEncoder(encoder, tokenizer, text.max_length, crop_fov, config)
    return model.to(device).eval()
