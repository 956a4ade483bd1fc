"""Classify image files with a trained run: each PNG or JPEG is brought to what the network was trained on,
a 32x32 RGB uint8 image, then normalized exactly as the run's training batches were.

Preparation (one rule, `prepare_image`):
  1. the EXIF orientation is applied (photos from phones), transparency is composited onto white;
  2. RGB (greyscale and palette images are converted; 16-bit greyscale is scaled to 8 bits, not clipped);
  3. the central square is cropped (CIFAR images are square; nothing is stretched);
  4. resized to 32x32 with Pillow's BICUBIC filter, which low-pass filters when shrinking (no aliasing);
  5. as uint8, then divided by 255 and normalized with the run's mean/std by the same code as training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import device as devices
from ..core.data import Split, class_names_for_config
from ..core.errors import DataError, first_line
from .analysis import TrainedModel, with_data_root, load_trained_model, run_logits

IMAGE_SIZE = 32
RESIZE_FILTER = "BICUBIC"  # a Pillow resampling filter (Image.Resampling.BICUBIC)


def prepare_image(path: str | Path, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 (3, size, size) RGB image from a file Pillow can read; DataError (one line) when it cannot."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"no image file at {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read {path} as an image: {first_line(exc)}") from None
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side))
    im = im.resize((size, size), getattr(Image.Resampling, RESIZE_FILTER))
    pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return pixels.view(size, size, 3).permute(2, 0, 1).contiguous()


def _to_8bit(im):
    """An 8-bit greyscale copy of a 16- or 32-bit integer image (e.g. a 16-bit PNG), scaled from 0..65535
    to 0..255; Pillow's own conversion clips instead, so almost every pixel would become white.
    Floating-point images have no agreed range and are refused."""
    import numpy as np
    from PIL import Image

    if im.mode == "F":
        raise ValueError("32-bit floating-point pixels are not supported; save it as an 8- or 16-bit PNG or a JPEG")
    pixels = np.asarray(im).astype(np.float64)
    return Image.fromarray((pixels.clip(0, 65535) / 257).round().astype(np.uint8), mode="L")


def _to_rgb(im):
    """RGB, with any transparency composited onto white (the colour under transparent pixels is arbitrary)."""
    from PIL import Image

    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def image_probabilities(trained: TrainedModel, images: torch.Tensor, device: torch.device,
                        tta_flip: bool | None = None) -> torch.Tensor:
    """(N, classes) softmax probabilities for uint8 images (N, 3, 32, 32), batched and normalized as in training."""
    unknown = torch.zeros(images.shape[0], dtype=torch.long)
    flip = trained.config.tta_flip if tta_flip is None else tta_flip
    logits, _ = run_logits(trained, Split(images, unknown, unknown), device, flip)
    return logits.softmax(dim=1)


@dataclass
class ImagePrediction:
    path: Path
    image: torch.Tensor               # uint8 (3, 32, 32), what the network saw (before normalization)
    top: list[tuple[str, float]]      # (class name, probability), most probable first


@dataclass
class PredictionSet:
    """Predictions for a list of files, with what made them."""

    items: list[ImagePrediction]
    trained: TrainedModel
    synthetic: bool                   # the run was trained on synthetic data: its class names mean nothing


def predict_files(run_dir: str | Path, paths: list[str | Path], weights: str = "last", device: str = "auto",
                  data_root: str | None = None, top: int = 5) -> PredictionSet:
    """The `top` most probable classes of each image file; every file is read before the model is loaded,
    so a bad path fails fast."""
    images = torch.stack([prepare_image(p) for p in paths])
    dev = devices.resolve_device(device)
    trained = load_trained_model(run_dir, dev, weights)
    fine_names, _ = class_names_for_config(with_data_root(trained.config, data_root))
    probs = image_probabilities(trained, images, dev)
    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
    items = [ImagePrediction(Path(p), img, [(fine_names[i], v) for v, i in zip(vs.tolist(), idx.tolist())])
             for p, img, vs, idx in zip(paths, images, values, indices)]
    return PredictionSet(items, trained, trained.config.synthetic)
