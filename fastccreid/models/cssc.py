"""The CSSC model: a ResNet-50 trunk, two layer4 branches with SMR modules, and a fused layer4[2].

Module and parameter names (and their registration order, which fixes the optimizer's parameter indices) equal the
official ``model/cssc.py``, so an official ``model_state_dict`` loads with ``strict=True``. The forward pass is
the official one computed with fewer, larger ops: the eight SMR stripes are pooled by one adaptive pool and projected
with one batched matmul instead of eight slices and eight small linears.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_DIM = 2048
IMAGENET_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"  # torchvision IMAGENET1K_V1, as the seed


class PretrainedWeightsError(RuntimeError):
    """The backbone weights asked for cannot be had (offline without a cached file, unreadable or wrong file)."""


def weights_init_kaiming(m: nn.Module) -> None:
    """The seed's init: kaiming for Linear (fan_out) / Conv (fan_in), BN weight 1 bias 0."""
    name = m.__class__.__name__
    if "Linear" in name:
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
        if m.bias is not None:
            nn.init.constant_(m.bias, 0.0)
    elif "Conv" in name:
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
        if m.bias is not None:
            nn.init.constant_(m.bias, 0.0)
    elif "BatchNorm" in name and m.affine:
        nn.init.constant_(m.weight, 1.0)
        nn.init.constant_(m.bias, 0.0)


def weights_init_classifier(m: nn.Module) -> None:
    """The seed's classifier init: normal(std=0.001), bias 0."""
    if "Linear" in m.__class__.__name__:
        nn.init.normal_(m.weight, std=0.001)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0.0)


class GlobalMaxPool(nn.Module):
    """Global max pool [B, C, H, W] -> [B, C, 1, 1]: ``adaptive_max_pool2d(x, 1)`` in training (the seed's op, whose
    gradient goes to one maximum per channel), ``amax`` over H, W in eval mode (the same values exactly; torch
    2.11's ONNX exporter has no translation of ``adaptive_max_pool2d``). No parameters: state dicts are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.adaptive_max_pool2d(x, 1)
        return x.amax(dim=(2, 3), keepdim=True)


def _bn_neck(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)  # BNNeck: the shift is frozen at 0
    bn.apply(weights_init_kaiming)
    return bn


class SMR(nn.Module):
    """Salient/content semantic mining and refinement on a feature map [B, C, H, W].

    Training returns (refined map [B, C, H, W], pooled g [B, C] before BN, logits [B, classes]); eval returns the
    refined map only. ``pool_type`` "avg" is the content SMR, "max" the salient one.
    """

    def __init__(self, pool_type: str = "avg", part_dim: int = 256, part_num: int = 8, reduction: int = 16,
                 feature_dim: int = FEATURE_DIM, num_classes: int = 1) -> None:
        super().__init__()
        if pool_type not in ("avg", "max"):
            raise ValueError(f"pool_type must be 'avg' or 'max', got {pool_type!r}")
        self.pool_type = pool_type
        self.part_dim = part_dim
        self.part_num = part_num
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        # Registration order = the official one (bottleneck, pool, l_conv_list, classifier, refinement).
        self.bottleneck = _bn_neck(feature_dim)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool_type == "avg" else GlobalMaxPool()
        self.l_conv_list = nn.ModuleList(
            nn.Sequential(nn.Linear(feature_dim, part_dim, bias=False), nn.BatchNorm1d(part_dim))
            for _ in range(part_num)
        )
        self.classifier = nn.Linear(part_num * part_dim + feature_dim, num_classes, bias=False)
        self.classifier.apply(weights_init_classifier)
        self.refinement = nn.Sequential(
            nn.Linear(feature_dim, feature_dim // reduction, bias=True),
            nn.ReLU(inplace=True),
            nn.Linear(feature_dim // reduction, feature_dim, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor):
        g = self.pool(x).flatten(1)  # [B, C]
        refined = x * self.refinement(g)[:, :, None, None]
        if not self.training:
            return refined
        h = x.shape[2]
        stripe = h // self.part_num
        if stripe == 0:
            raise ValueError(f"SMR needs a feature map at least {self.part_num} rows high, got {h} "
                             f"(input images too small)")
        # All stripes pooled in one op: adaptive pooling of rows [0, part_num*stripe) to (part_num, 1) pools exactly
        # the equal stripes (leftover rows dropped, as the seed), same op type hence same gradients -> [B, C, P].
        pool2d = F.adaptive_avg_pool2d if self.pool_type == "avg" else F.adaptive_max_pool2d
        parts = pool2d(x[:, :, : self.part_num * stripe], (self.part_num, 1)).flatten(2)
        # Eight Linear(C -> part_dim) as one batched matmul: [P, B, C] @ [P, C, part_dim] -> [P, B, part_dim].
        weight = torch.stack([seq[0].weight for seq in self.l_conv_list])  # [P, part_dim, C]
        proj = torch.bmm(parts.permute(2, 0, 1), weight.transpose(1, 2).to(parts.dtype))
        local = [seq[1](proj[i]) for i, seq in enumerate(self.l_conv_list)]  # each part keeps its own BN stats
        logits = self.classifier(torch.cat([self.bottleneck(g), *local], dim=1))
        return refined, g, logits


class CSSC(nn.Module):
    """CSSC. Training: ([5 features [B, 2048]], [5 logits [B, classes]]) in the order SMR-c b1, SMR-s b1,
    SMR-s b2, SMR-c b2, fused. Eval: the fused 2048-d feature [B, 2048] (max-pooled, before the BN neck).

    ``pretrained``: "imagenet" (torchvision's IMAGENET1K_V1 from its cache, downloaded if absent), None / "none",
    or a path to a ResNet-50 state dict.
    """

    def __init__(self, num_classes: int, last_stride: int = 1, pretrained: str | os.PathLike[str] | None = "imagenet"
                 ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        from torchvision.models import resnet50

        resnet = resnet50(weights=None)
        load_backbone_weights(resnet, pretrained)
        resnet.layer4[0].downsample[0].stride = (last_stride, last_stride)
        resnet.layer4[0].conv2.stride = (last_stride, last_stride)
        self.backbone_before_layer4 = nn.Sequential(
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2, resnet.layer3
        )
        self.num_classes = num_classes
        self.feature_dim = FEATURE_DIM
        self.backbone_layer41_branch1 = resnet.layer4[0]
        self.backbone_layer42_branch1 = resnet.layer4[1]
        self.backbone_layer41_branch2 = copy.deepcopy(resnet.layer4[0])
        self.backbone_layer42_branch2 = copy.deepcopy(resnet.layer4[1])
        self.backbone_layer43 = resnet.layer4[2]
        self.smr_c_branch1 = SMR("avg", feature_dim=FEATURE_DIM, num_classes=num_classes)
        self.smr_s_branch1 = SMR("max", feature_dim=FEATURE_DIM, num_classes=num_classes)
        self.smr_s_branch2 = SMR("max", feature_dim=FEATURE_DIM, num_classes=num_classes)
        self.smr_c_branch2 = SMR("avg", feature_dim=FEATURE_DIM, num_classes=num_classes)
        self.pool = GlobalMaxPool()
        self.bottleneck = _bn_neck(FEATURE_DIM)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes, bias=False)
        self.classifier.apply(weights_init_classifier)

    def forward(self, x: torch.Tensor):
        x = self.backbone_before_layer4(x)
        if not self.training:
            b1 = self.smr_s_branch1(self.backbone_layer42_branch1(self.smr_c_branch1(self.backbone_layer41_branch1(x))))
            b2 = self.smr_c_branch2(self.backbone_layer42_branch2(self.smr_s_branch2(self.backbone_layer41_branch2(x))))
            return self.pool(self.backbone_layer43(b1 + b2)).flatten(1)
        x1, f_c1, y_c1 = self.smr_c_branch1(self.backbone_layer41_branch1(x))
        x1, f_s1, y_s1 = self.smr_s_branch1(self.backbone_layer42_branch1(x1))
        x2, f_s2, y_s2 = self.smr_s_branch2(self.backbone_layer41_branch2(x))
        x2, f_c2, y_c2 = self.smr_c_branch2(self.backbone_layer42_branch2(x2))
        feat = self.pool(self.backbone_layer43(x1 + x2)).flatten(1)  # global max pool -> [B, 2048]
        y = self.classifier(self.bottleneck(feat))
        return [f_c1, f_s1, f_s2, f_c2, feat], [y_c1, y_s1, y_s2, y_c2, y]


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a DataParallel/DDP ``module.`` (and torch.compile ``_orig_mod.``) prefix when every key has it."""
    out = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def describe_state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor], limit: int = 8) -> str:
    """A readable account of how ``state_dict`` differs from ``model``'s keys and shapes ('' when it matches)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state_dict.items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {title}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a (possibly ``module.``-prefixed) state dict with strict=True, or raise ValueError naming what differs."""
    sd = strip_module_prefix(state_dict)
    problem = describe_state_dict_mismatch(model, sd)
    if problem:
        raise ValueError(f"{source}: model weights do not match this CSSC model: {problem}")
    model.load_state_dict(sd, strict=True)


def _imagenet_cache_path() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(IMAGENET_URL))


def _read_resnet_state(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise PretrainedWeightsError(f"--pretrained {path}: cannot read it as a ResNet-50 state dict ({exc})") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"--pretrained {path}: expected a ResNet-50 state dict (name -> tensor)")
    return strip_module_prefix(obj)


def load_backbone_weights(resnet: nn.Module, pretrained: str | os.PathLike[str] | None) -> str:
    """Load ImageNet (or local) weights into a torchvision ResNet-50 in place; returns where they came from.

    ``pretrained``: "imagenet" (torchvision's cache, downloaded when absent), None/"none" (random init) or a path.
    Offline without a cached file raises PretrainedWeightsError pointing at ``--pretrained PATH|none``.
    """
    if pretrained is None or (isinstance(pretrained, str) and pretrained.lower() == "none"):
        return "none"
    if isinstance(pretrained, str) and pretrained.lower() == "imagenet":
        cached = _imagenet_cache_path()
        if os.path.isfile(cached):
            state = _read_resnet_state(cached)
            source = cached
        else:
            try:
                state = torch.hub.load_state_dict_from_url(IMAGENET_URL, map_location="cpu", progress=False,
                                                           weights_only=True)
            except Exception as exc:  # noqa: BLE001 - offline, proxy, disk: all need the same advice
                raise PretrainedWeightsError(
                    f"ImageNet ResNet-50 weights are not in torchvision's cache ({cached}) and could not be "
                    f"downloaded ({type(exc).__name__}: {exc}). Put the file there, or pass --pretrained PATH "
                    f"(a local resnet50 .pth), or --pretrained none to train from random initialisation."
                ) from None
            source = IMAGENET_URL
    else:
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise PretrainedWeightsError(f"--pretrained {path}: no such file (expected 'imagenet', 'none' or the "
                                         f"path of a ResNet-50 state dict)")
        state = _read_resnet_state(path)
        source = path
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the ImageNet head is not used
    own = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state))
    bad = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or bad:
        raise PretrainedWeightsError(
            f"--pretrained {source}: not a ResNet-50 state dict ({len(missing)} missing keys, e.g. "
            f"{missing[:3]}; {len(bad)} shape mismatches, e.g. {bad[:3]})")
    resnet.load_state_dict(state, strict=False)
    return source
