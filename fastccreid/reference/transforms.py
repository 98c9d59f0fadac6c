"""The seed's image transforms (FIRe-CCReID ``data_process/transform.py``): PIL + torchvision, per image.

Train: Resize((H, W)) -> RandomHorizontalFlip(p) -> Pad(pad, fill 0) -> RandomCrop((H, W)) -> ToTensor ->
Normalize(ImageNet mean/std) -> RandomErasing(p, fill 0 on every channel). ``get_transform`` passes
``mean=[0.0, 0.0, 0.0]`` to RandomErasing, so the erased box is 0 in the NORMALISED tensor (the ImageNet mean
colour), not the class default (CIFAR means). Test: Resize -> ToTensor -> Normalize.
Randomness: torchvision's flip/crop draw from torch's global RNG, RandomErasing from Python's ``random``.
"""

from __future__ import annotations

import math
import random

import torch
from torchvision import transforms as T  # noqa: N812

# The oracle's own copy of the constants (production defines its own in ``fastccreid.data.transforms``; an oracle
# shares no code with what it checks). tests/test_loaders.py pins both to these literals.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomErasing:
    """Random erasing (Zhong et al. 2017) on a [C, H, W] tensor, in place, as the seed.

    With probability ``probability``: up to 100 tries of area ~ U(sl, sh) * H * W and aspect ~ U(r1, 1/r1);
    h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); the first box with h < H and w < W is filled
    with ``mean`` (per channel for 3 channels, ``mean[0]`` otherwise). Returns the (same) tensor."""

    def __init__(self, probability: float = 0.5, sl: float = 0.02, sh: float = 0.4, r1: float = 0.3,
                 mean=(0.4914, 0.4822, 0.4465)):
        self.probability = probability
        self.mean = mean
        self.sl = sl
        self.sh = sh
        self.r1 = r1

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if random.uniform(0, 1) > self.probability:
            return img
        for _ in range(100):
            area = img.size()[1] * img.size()[2]
            target_area = random.uniform(self.sl, self.sh) * area
            aspect_ratio = random.uniform(self.r1, 1 / self.r1)
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < img.size()[2] and h < img.size()[1]:
                x1 = random.randint(0, img.size()[1] - h)
                y1 = random.randint(0, img.size()[2] - w)
                if img.size()[0] == 3:
                    img[0, x1:x1 + h, y1:y1 + w] = self.mean[0]
                    img[1, x1:x1 + h, y1:y1 + w] = self.mean[1]
                    img[2, x1:x1 + h, y1:y1 + w] = self.mean[2]
                else:
                    img[0, x1:x1 + h, y1:y1 + w] = self.mean[0]
                return img
        return img


def build_train_transform(height: int = 384, width: int = 192, flip_p: float = 0.5, pad: int = 10,
                          erase_p: float = 0.5) -> T.Compose:
    """The seed's training transform: PIL image -> normalised float tensor [3, height, width]."""
    return T.Compose([
        T.Resize((height, width)),
        T.RandomHorizontalFlip(p=flip_p),
        T.Pad(padding=pad),
        T.RandomCrop((height, width)),
        T.ToTensor(),
        T.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        RandomErasing(probability=erase_p, mean=[0.0, 0.0, 0.0]),
    ])


def build_test_transform(height: int = 384, width: int = 192) -> T.Compose:
    """The seed's test transform: PIL image -> normalised float tensor [3, height, width]."""
    return T.Compose([
        T.Resize((height, width)),
        T.ToTensor(),
        T.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
    ])
