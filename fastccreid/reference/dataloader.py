"""The seed's data loading (FIRe-CCReID ``utils/util.py::read_image``, ``data_process/dataset_loader*.py``):
one PIL decode + torchvision transform per image in torch DataLoader workers. Not optimised.

Differences from the seed, for a uniform interface over ``fastccreid.data`` records:
- one ``ImageDataset`` for every dataset, yielding ``(img, pid, camid, clothes_id)`` in ``ImageRecord`` field
  order. The seed has two: ``ImageDataset`` -> (img, pid, camid) for Market/Celeb-style datasets and
  ``ImageClothDataset_cc`` -> (img, pid, clothid, camid) for LTCC/PRCC (note its clothes-before-camera order).
- ``build_reference_loaders`` returns the query loaders by setting name (PRCC: same-clothes and
  clothes-changing) instead of the seed's positional tuples.
Kept as the seed: ``read_image`` retries FOREVER on an IOError (e.g. a truncated file), printing each time;
only a missing path raises. The fast loader fixes this (bounded retries, a clear error).
"""

from __future__ import annotations

import os.path as osp
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fastccreid.data.records import ImageRecord, ReIDDataset
from fastccreid.reference.sampler import RandomIdentitySampler
from fastccreid.reference.transforms import build_test_transform, build_train_transform


def read_image(img_path: str) -> Image.Image:
    """PIL RGB image. As the seed: IOError -> print and retry, without limit (it never returns on a corrupt file)."""
    got_img = False
    if not osp.exists(img_path):
        raise OSError(f"{img_path} does not exist")
    while not got_img:
        try:
            img = Image.open(img_path).convert("RGB")
            got_img = True
        except OSError:
            print(f"IOError incurred when reading '{img_path}'. Will Redo. Don't worry. Just chill")
    return img


class ImageDataset(Dataset):
    """records[i] -> (transform(PIL image), pid, camid, clothes_id). Records: ``ImageRecord`` or the seed's
    (path, pid, camid) tuples (clothes_id then 0)."""

    def __init__(self, records, transform=None):
        self.dataset = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, ImageRecord):
            img_path, pid, camid, clothes_id = item.path, item.pid, item.camid, item.clothes_id
        else:
            img_path, pid, camid = item[:3]
            clothes_id = 0
        img = read_image(img_path)
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, clothes_id


@dataclass
class ReferenceLoaders:
    """The seed's loaders: ``train`` (P x K sampler, drop_last) and one unshuffled loader per evaluation set."""

    train: DataLoader
    gallery: DataLoader
    queries: dict[str, DataLoader]


def build_reference_loaders(dataset: ReIDDataset, height: int = 384, width: int = 192, train_batch: int = 32,
                            test_batch: int = 128, num_instances: int = 8, num_workers: int = 8,
                            use_gpu: bool | None = None, flip_p: float = 0.5, pad: int = 10,
                            erase_p: float = 0.5) -> ReferenceLoaders:
    """DataLoaders as the seed's ``get_*_dataset_loader``: train with ``RandomIdentitySampler`` and
    ``drop_last=True``; query/gallery ``shuffle=False, drop_last=False``; ``pin_memory`` = use_gpu (default: CUDA
    available); the same ``num_workers`` everywhere; default collate."""
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    transform_train = build_train_transform(height, width, flip_p=flip_p, pad=pad, erase_p=erase_p)
    transform_test = build_test_transform(height, width)
    sampler = RandomIdentitySampler(dataset.train, batch_size=train_batch, num_instances=num_instances)
    train = DataLoader(ImageDataset(dataset.train, transform=transform_train), sampler=sampler,
                       batch_size=train_batch, num_workers=num_workers, pin_memory=use_gpu, drop_last=True)

    def test_loader(records) -> DataLoader:
        return DataLoader(ImageDataset(records, transform=transform_test), batch_size=test_batch, shuffle=False,
                          num_workers=num_workers, pin_memory=use_gpu, drop_last=False)

    queries = {name: test_loader(recs) for name, recs in dataset.eval_queries().items()}
    return ReferenceLoaders(train=train, gallery=test_loader(dataset.gallery), queries=queries)
