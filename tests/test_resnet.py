"""Native ResNets: torchvision's names, shapes and parameter counts; frozen mode; weight loading."""

from __future__ import annotations

import pytest
import torch

from pretext3d.models.resnet import load_torchvision_weights, resnet18, resnet50


@pytest.mark.parametrize(("build", "parameters", "entries", "dim"), [
    (resnet18, 11_689_512, 122, 512),  # the counts of torchvision's resnet18 / resnet50
    (resnet50, 25_557_032, 320, 2048),
])
def test_torchvision_layout(build, parameters, entries, dim):
    model = build(num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert len(model.state_dict()) == entries  # including BN buffers and num_batches_tracked
    assert model.feature_dim == dim and model.state_dict()["fc.weight"].shape == (1000, dim)


def test_torchvision_key_names_and_shapes():
    r18, r50 = resnet18(1000).state_dict(), resnet50(1000).state_dict()
    expected18 = {"conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3),
                  "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer2.0.downsample.1.running_mean": (128,),
                  "layer4.1.bn2.weight": (512,), "fc.bias": (1000,)}
    expected50 = {"layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer1.0.conv3.weight": (256, 64, 1, 1),
                  "layer3.5.conv2.weight": (256, 256, 3, 3), "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
                  "layer4.2.bn3.num_batches_tracked": ()}
    for state, expected in ((r18, expected18), (r50, expected50)):
        for key, shape in expected.items():
            assert tuple(state[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in r18  # basic blocks keep their width in stage 1


def test_global_and_local_outputs():
    model = resnet18().eval()
    out = model(torch.randn(2, 3, 224, 224))
    assert out.global_.shape == (2, 512) and out.local.shape == (2, 512, 7, 7) and out.logits is None
    torch.testing.assert_close(out.global_, out.local.mean(dim=(2, 3)))
    assert resnet50().eval()(torch.randn(1, 3, 64, 64)).local.shape == (1, 2048, 2, 2)


def test_weights_load_strictly_with_and_without_the_classifier():
    source = resnet18(num_classes=1000)
    weights = {k: v.clone() for k, v in source.state_dict().items()}
    head = resnet18(num_classes=1000)
    load_torchvision_weights(head, weights)
    features = resnet18()
    load_torchvision_weights(features, weights)  # fc.* dropped for a feature extractor
    x = torch.randn(1, 3, 64, 64)
    source.eval(), features.eval()
    torch.testing.assert_close(features(x).global_, source(x).global_)
    broken = dict(weights)
    broken.pop("layer3.1.conv2.weight")
    with pytest.raises(RuntimeError, match="layer3.1.conv2.weight"):
        load_torchvision_weights(resnet18(), broken)


def test_frozen_model_has_no_gradients_and_keeps_bn_statistics():
    model = resnet18(frozen=True)
    model.train()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(model.bn1.running_mean, before)
