"""CSSC model: official key list and shapes, strict loading of official-style state dicts, forward parity with a
literal transcription of the official forward, init, and backbone weight loading."""

from __future__ import annotations

import copy
import urllib.error

import pytest
import torch

from fastccreid.models import CSSC, SMR, PretrainedWeightsError, load_model_state, strip_module_prefix

NUM_CLASSES = 7
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{n}", () if n == "num_batches_tracked" else (c,)) for n in BN]


def _bottleneck(prefix: str, inplanes: int, planes: int, downsample: bool) -> list[tuple[str, tuple[int, ...]]]:
    """torchvision Bottleneck (expansion 4): conv1 1x1, conv2 3x3, conv3 1x1, optional downsample conv+bn."""
    out = [(f"{prefix}.conv1.weight", (planes, inplanes, 1, 1)), *_bn(f"{prefix}.bn1", planes),
           (f"{prefix}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{prefix}.bn2", planes),
           (f"{prefix}.conv3.weight", (planes * 4, planes, 1, 1)), *_bn(f"{prefix}.bn3", planes * 4)]
    if downsample:
        out += [(f"{prefix}.downsample.0.weight", (planes * 4, inplanes, 1, 1)),
                *_bn(f"{prefix}.downsample.1", planes * 4)]
    return out


def _smr(prefix: str, classes: int) -> list[tuple[str, tuple[int, ...]]]:
    """Official SMR: bottleneck BN1d(2048), pool (no params), l_conv_list[8] = Linear(2048,256,no bias)+BN1d(256),
    classifier Linear(8*256+2048 -> classes, no bias), refinement Linear(2048,128)+ReLU+Linear(128,2048)+Sigmoid."""
    out = _bn(f"{prefix}.bottleneck", 2048)
    for i in range(8):
        out += [(f"{prefix}.l_conv_list.{i}.0.weight", (256, 2048)), *_bn(f"{prefix}.l_conv_list.{i}.1", 256)]
    out += [(f"{prefix}.classifier.weight", (classes, 4096)),
            (f"{prefix}.refinement.0.weight", (128, 2048)), (f"{prefix}.refinement.0.bias", (128,)),
            (f"{prefix}.refinement.2.weight", (2048, 128)), (f"{prefix}.refinement.2.bias", (2048,))]
    return out


def official_keys(classes: int) -> list[tuple[str, tuple[int, ...]]]:
    """The official CSSC state_dict in registration order, transcribed from QizaoWang/CSSC-CCReID model/cssc.py:
    backbone_before_layer4 = Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3), the four layer4 block
    copies, layer4[2], the four SMRs (c b1, s b1, s b2, c b2), pool, bottleneck, classifier."""
    out = [("backbone_before_layer4.0.weight", (64, 3, 7, 7)), *_bn("backbone_before_layer4.1", 64)]
    inplanes = 64
    for seq_idx, planes, blocks in ((4, 64, 3), (5, 128, 4), (6, 256, 6)):
        for b in range(blocks):
            out += _bottleneck(f"backbone_before_layer4.{seq_idx}.{b}", inplanes, planes, b == 0)
            inplanes = planes * 4
    out += _bottleneck("backbone_layer41_branch1", 1024, 512, True)
    out += _bottleneck("backbone_layer42_branch1", 2048, 512, False)
    out += _bottleneck("backbone_layer41_branch2", 1024, 512, True)
    out += _bottleneck("backbone_layer42_branch2", 2048, 512, False)
    out += _bottleneck("backbone_layer43", 2048, 512, False)
    for name in ("smr_c_branch1", "smr_s_branch1", "smr_s_branch2", "smr_c_branch2"):
        out += _smr(name, classes)
    out += [*_bn("bottleneck", 2048), ("classifier.weight", (classes, 2048))]
    return out


@pytest.fixture(scope="module")
def model() -> CSSC:
    torch.manual_seed(0)
    return CSSC(NUM_CLASSES, pretrained=None)


def test_state_dict_keys_shapes_and_order_match_official(model):
    expected = official_keys(NUM_CLASSES)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert [k for k, _ in got] == [k for k, _ in expected]  # order too: it fixes optimizer parameter indices
    assert got == expected


def test_official_state_dict_loads_strict_with_and_without_module_prefix(model):
    g = torch.Generator().manual_seed(1)
    official = {k: (torch.randint(0, 9, (), generator=g) if k.endswith("num_batches_tracked")
                    else torch.randn(s, generator=g)) for k, s in official_keys(NUM_CLASSES)}
    m = copy.deepcopy(model)
    for sd in (official, {f"module.{k}": v for k, v in official.items()}):
        load_model_state(m, sd)
        own = m.state_dict()
        assert all(torch.equal(own[k], official[k]) for k in official)
    assert list(strip_module_prefix({"module.a": 1, "module.b": 2})) == ["a", "b"]
    assert list(strip_module_prefix({"module.a": 1, "b": 2})) == ["module.a", "b"]


def test_mismatched_state_dict_names_what_differs(model):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["classifier.weight"] = torch.zeros(NUM_CLASSES + 3, 2048)
    del sd["smr_c_branch1.refinement.0.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        load_model_state(copy.deepcopy(model), sd, source="ckpt.pth")
    msg = str(e.value)
    assert "ckpt.pth" in msg and "classifier.weight" in msg and "(10, 2048)" in msg
    assert "smr_c_branch1.refinement.0.bias" in msg and "extra.weight" in msg


def test_init_and_frozen_bias(model):
    for name in ("bottleneck", "smr_c_branch1.bottleneck", "smr_s_branch2.bottleneck"):
        bn = model.get_submodule(name)
        assert not bn.bias.requires_grad and torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert model.classifier.bias is None and model.smr_s_branch1.classifier.bias is None
    assert 0.0005 < model.classifier.weight.std().item() < 0.002
    assert model.backbone_layer41_branch1.conv2.stride == (1, 1)
    assert model.backbone_layer41_branch1.downsample[0].stride == (1, 1)
    # branch 2 starts as a copy of branch 1 but owns separate parameters
    assert torch.equal(model.backbone_layer41_branch2.conv2.weight, model.backbone_layer41_branch1.conv2.weight)
    assert model.backbone_layer41_branch2.conv2.weight is not model.backbone_layer41_branch1.conv2.weight


def _official_smr(smr: SMR, x: torch.Tensor):
    """Literal transcription of the official SMR.forward (slice-by-slice stripes, one Linear+BN per stripe)."""
    g = smr.pool(x).flatten(1)
    out = None
    if smr.training:
        g_bn = smr.bottleneck(g)
        part_len = x.shape[2] // smr.part_num
        parts = [smr.l_conv_list[i](smr.pool(x[:, :, i * part_len:(i + 1) * part_len, :]).flatten(1))
                 for i in range(smr.part_num)]
        out = smr.classifier(torch.cat([g_bn, torch.cat(parts, dim=-1)], dim=-1))
    refined = smr.refinement(g).unsqueeze(-1).unsqueeze(-1) * x
    return (refined, g, out) if smr.training else refined


def _official_cssc(m: CSSC, x: torch.Tensor):
    """Literal transcription of the official CSSC.forward in training mode."""
    x = m.backbone_before_layer4(x)
    x1, f1, y1 = _official_smr(m.smr_c_branch1, m.backbone_layer41_branch1(x))
    x1, f2, y2 = _official_smr(m.smr_s_branch1, m.backbone_layer42_branch1(x1))
    x2, f3, y3 = _official_smr(m.smr_s_branch2, m.backbone_layer41_branch2(x))
    x2, f4, y4 = _official_smr(m.smr_c_branch2, m.backbone_layer42_branch2(x2))
    feat = m.pool(m.backbone_layer43(x1 + x2)).flatten(1)
    return [f1, f2, f3, f4, feat], [y1, y2, y3, y4, m.classifier(m.bottleneck(feat))]


@pytest.mark.parametrize("pool_type,h", [("avg", 8), ("max", 8), ("avg", 11), ("max", 13)])
def test_smr_matches_official_forward_and_backward(pool_type, h):
    torch.manual_seed(2)
    smr = SMR(pool_type, num_classes=5).train()
    ref = copy.deepcopy(smr)
    x = torch.randn(4, 2048, h, 3).relu().requires_grad_(True)  # h not a multiple of 8: leftover rows dropped
    x2 = x.detach().clone().requires_grad_(True)
    out, out_ref = smr(x), _official_smr(ref, x2)
    for a, b in zip(out, out_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    (out[0].sum() + out[2].pow(2).sum()).backward()
    (out_ref[0].sum() + out_ref[2].pow(2).sum()).backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for (n, p), (_, q) in zip(smr.named_parameters(), ref.named_parameters(), strict=True):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)
    for (n, b), (_, c) in zip(smr.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, c, msg=n)  # running stats updated identically
    smr.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(smr(x), _official_smr(ref, x))


def test_cssc_train_outputs_match_official_and_eval_is_layout_invariant(model):
    torch.manual_seed(3)
    m = copy.deepcopy(model).train()
    ref = copy.deepcopy(model).train()
    x = torch.randn(4, 3, 128, 32)
    with torch.no_grad():
        feats, logits = m(x)
        feats_ref, logits_ref = _official_cssc(ref, x)
    assert len(feats) == 5 and len(logits) == 5
    assert all(f.shape == (4, 2048) for f in feats) and all(y.shape == (4, NUM_CLASSES) for y in logits)
    for a, b in zip(feats + logits, feats_ref + logits_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    m.eval()
    with torch.no_grad():
        f = m(x)
        f_cl = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert f.shape == (4, 2048)
    torch.testing.assert_close(f, f_cl, rtol=1e-4, atol=1e-4)


# --- eval forward vs an independent fp64 transcription ---------------------------------------------------------
# The oracle below reads parameters by their official state_dict names and computes with torch's functional ops
# only: it calls no module of fastccreid (nor torchvision's ResNet), so a wrong wiring in CSSC.forward / SMR.forward
# cannot be reproduced by it. Architecture (official model/cssc.py over torchvision's resnet50): stem conv7x7/2 +
# BN + ReLU + maxpool3x3/2, layer1-3 of Bottlenecks (stride on the 3x3 conv, 1x1 strided downsample + BN on the
# first block), then per branch layer4[0] (stride last_stride) -> SMR -> layer4[1] -> SMR, the two branches summed
# into layer4[2], and a global max pool: the eval output is that pooled [B, 2048] feature (no BN neck).

def _o_bn(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Eval BatchNorm from running statistics, written out: (x - mean) / sqrt(var + eps) * weight + bias."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = sd[f"{p}.running_mean"].view(shape), sd[f"{p}.running_var"].view(shape)
    return (x - mean) / torch.sqrt(var + eps) * sd[f"{p}.weight"].view(shape) + sd[f"{p}.bias"].view(shape)


def _o_bottleneck(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, stride: int) -> torch.Tensor:
    """torchvision Bottleneck (v1.5: the stride sits on the 3x3 conv)."""
    out = torch.relu(_o_bn(sd, f"{p}.bn1", torch.nn.functional.conv2d(x, sd[f"{p}.conv1.weight"])))
    out = torch.relu(_o_bn(sd, f"{p}.bn2", torch.nn.functional.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride,
                                                                      padding=1)))
    out = _o_bn(sd, f"{p}.bn3", torch.nn.functional.conv2d(out, sd[f"{p}.conv3.weight"]))
    if f"{p}.downsample.0.weight" in sd:
        x = _o_bn(sd, f"{p}.downsample.1",
                  torch.nn.functional.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
    return torch.relu(out + x)


def _o_smr_eval(sd: dict[str, torch.Tensor], p: str, pool: str, x: torch.Tensor) -> torch.Tensor:
    """Official SMR.forward in eval: x * sigmoid(W2 relu(W1 g + b1) + b2) with g the global avg / max pool."""
    g = x.mean(dim=(2, 3)) if pool == "avg" else x.amax(dim=(2, 3))
    hidden = torch.relu(g @ sd[f"{p}.refinement.0.weight"].T + sd[f"{p}.refinement.0.bias"])
    gate = torch.sigmoid(hidden @ sd[f"{p}.refinement.2.weight"].T + sd[f"{p}.refinement.2.bias"])
    return gate[:, :, None, None] * x


def _official_cssc_eval(sd: dict[str, torch.Tensor], x: torch.Tensor, last_stride: int) -> torch.Tensor:
    """Official CSSC.forward in eval mode: [B, 3, H, W] -> the fused max-pooled feature [B, 2048]."""
    x = torch.nn.functional.conv2d(x, sd["backbone_before_layer4.0.weight"], stride=2, padding=3)
    x = torch.relu(_o_bn(sd, "backbone_before_layer4.1", x))
    x = torch.nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for seq_idx, blocks, stride in ((4, 3, 1), (5, 4, 2), (6, 6, 2)):
        for b in range(blocks):
            x = _o_bottleneck(sd, f"backbone_before_layer4.{seq_idx}.{b}", x, stride if b == 0 else 1)
    x1 = _o_smr_eval(sd, "smr_c_branch1", "avg", _o_bottleneck(sd, "backbone_layer41_branch1", x, last_stride))
    x1 = _o_smr_eval(sd, "smr_s_branch1", "max", _o_bottleneck(sd, "backbone_layer42_branch1", x1, 1))
    x2 = _o_smr_eval(sd, "smr_s_branch2", "max", _o_bottleneck(sd, "backbone_layer41_branch2", x, last_stride))
    x2 = _o_smr_eval(sd, "smr_c_branch2", "avg", _o_bottleneck(sd, "backbone_layer42_branch2", x2, 1))
    return _o_bottleneck(sd, "backbone_layer43", x1 + x2, 1).amax(dim=(2, 3))


def _perturbed_state(m: CSSC, seed: int) -> dict[str, torch.Tensor]:
    """fp64 copy of ``m``'s state with every tensor made distinct: random init leaves BN at identity (running mean
    0, var 1, weight 1, bias 0), the two layer4 branches as exact copies and the refinement biases at 0, which
    would hide a wrong BN formula, a swapped branch or a dropped bias. Conv / Linear weights get a random scale
    (1 + 0.2 N(0, 1)) per output channel (cheap, and enough to tell the branch copies apart)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in m.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        v = v.double()
        if k.endswith("running_var"):
            v = 0.5 + 1.5 * torch.rand(v.shape, generator=g, dtype=torch.float64)
        elif k.endswith("running_mean") or k.endswith(".bias"):
            v = 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64)
        elif k.endswith(".weight") and v.dim() == 1:  # BN scale
            v = 0.5 + torch.rand(v.shape, generator=g, dtype=torch.float64)
        else:
            v = v * (1 + 0.2 * torch.randn((v.shape[0],) + (1,) * (v.dim() - 1), generator=g, dtype=torch.float64))
        out[k] = v
    return out


@pytest.mark.parametrize("last_stride", [1, 2])
def test_cssc_eval_forward_matches_official_fp64(model, last_stride):
    m = model if last_stride == 1 else CSSC(NUM_CLASSES, last_stride=2, pretrained=None)
    m = copy.deepcopy(m).double().eval()
    sd = _perturbed_state(m, seed=5 + last_stride)
    m.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        f = m(x)
        f_ref = _official_cssc_eval(sd, x, last_stride)
    assert f.dtype == torch.float64 and f.shape == (2, 2048)
    assert f_ref.abs().max() > 0 and (f_ref[0] - f_ref[1]).abs().max() > 1e-3 * f_ref.abs().max()
    # fp64 with the same ops in a different association (BN as x * invstd vs division): rounding ~1e-16 per op,
    # grown through ~60 layers (seen: 3e-15 of the largest value); 1e-10 relative is far above that and far below
    # any wiring error.
    torch.testing.assert_close(f, f_ref, rtol=1e-10, atol=1e-10 * f_ref.abs().max().item())


def test_too_small_input_is_a_clear_error(model):
    m = copy.deepcopy(model).train()
    with pytest.raises(ValueError, match="at least 8 rows"):
        m(torch.randn(2, 3, 64, 32))


def test_local_pretrained_file_and_errors(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    torch.manual_seed(4)
    weights = resnet50(weights=None).state_dict()
    path = tmp_path / "r50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, path)
    m = CSSC(3, pretrained=str(path))
    torch.testing.assert_close(m.backbone_before_layer4[0].weight, weights["conv1.weight"])
    torch.testing.assert_close(m.backbone_layer41_branch2.conv2.weight, weights["layer4.0.conv2.weight"])
    torch.testing.assert_close(m.backbone_layer43.conv3.weight, weights["layer4.2.conv3.weight"])

    with pytest.raises(PretrainedWeightsError, match="no such file"):
        CSSC(3, pretrained=str(tmp_path / "absent.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(PretrainedWeightsError, match="not a ResNet-50"):
        CSSC(3, pretrained=str(tmp_path / "bad.pth"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty cache
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError, match="--pretrained PATH") as e:
        CSSC(3, pretrained="imagenet")
    assert "--pretrained none" in str(e.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        CSSC(0, pretrained=None)
    with pytest.raises(ValueError, match="pool_type"):
        SMR("sum")


def test_global_max_pool_is_the_seeds_in_both_modes():
    """Training: adaptive_max_pool2d itself (its gradient goes to one maximum per channel, also on the ReLU zeros'
    ties); eval: amax, the same values bit for bit (what torch 2.11's ONNX exporter can translate)."""
    import torch.nn.functional as F

    from fastccreid.models.cssc import GlobalMaxPool

    x = torch.randn(2, 5, 6, 3).relu()
    x[0, 1] = 0.0  # a channel of ties
    pool = GlobalMaxPool()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    pool.train()
    out = pool(a)
    out.sum().backward()
    ref = F.adaptive_max_pool2d(b, 1)
    ref.sum().backward()
    assert torch.equal(out, ref) and torch.equal(a.grad, b.grad)
    assert a.grad[0, 1].sum() == 1.0  # one maximum gets the whole gradient
    pool.eval()
    assert torch.equal(pool(x), F.adaptive_max_pool2d(x, 1))
