"""vision/models.py and vision/torchvision_compat.py: the six architectures, their Grad-CAM layers, the refusals,
the weights, and torchvision's import on a CPU-only torch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from agents.attention import camal_loss, grad_cam, relevance_mass
from vision import models, torchvision_compat

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # the study's likely image size

# The Grad-CAM layer of each architecture, as the issue states it, and how its tensor is laid out:
# "output" (B, K, h, w), "output_channels_last" (B, h, w, K), "input_tokens" (B, 1 + h*w, K) with the class token
# first.
LAYERS = {
    "resnet": (lambda network: network.layer4, "output"),
    "convnext": (lambda network: network.features[-1], "output"),
    "efficientnet": (lambda network: network.features[-1], "output"),
    "swin": (lambda network: network.features[-1], "output_channels_last"),
    "maxvit": (lambda network: network.blocks[-1], "output"),
    "vit": (lambda network: network.encoder.layers[-1], "input_tokens"),
}
# (grid at 64 px, grid at 96 px): the module docstring's table
GRIDS = {
    "resnet50": (2, 3), "vit_b_16": (4, 6), "swin_t": (2, 3), "maxvit_t": (2, 3), "convnext_tiny": (2, 3),
    "efficientnet_b0": (2, 3),
    "resnet_mini": (4, 6), "vit_mini": (8, 12), "swin_mini": (4, 6), "maxvit_mini": (4, 6), "convnext_mini": (4, 6),
    "efficientnet_mini": (4, 6),
}  # fmt: skip
ALL_MODELS = [pytest.param(name, marks=pytest.mark.slow) for name in models.STANDARD_MODELS] + list(
    models.REDUCED_MODELS
)


def batch(size: int = SIZE, count: int = 4):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(count, 3, size, size, generator=generator)
    labels = torch.arange(count) % 4
    masks = torch.zeros(count, size, size)
    masks[:, : size // 2, : size // 2] = 1.0  # the top-left quarter, the same on every image
    return images, labels, masks


def classifier_map(classifier, images, labels):
    torch.manual_seed(0)  # the same stochastic depth draws as the independent pass
    with models.attention_math_kernel():
        features, logits = classifier.features_and_logits(images)
        maps = grad_cam(features, logits, labels, images.shape[2:])
    return features, logits, maps


def independent_grad_cam(classifier, images, labels):
    """Grad-CAM from a forward hook on the architecture's layer in the plain torchvision network."""
    layer_of, layout = LAYERS[classifier.architecture]
    seen = {}
    layer = layer_of(classifier.network)
    if layout == "input_tokens":
        handle = layer.register_forward_pre_hook(lambda module, inputs: seen.update(tensor=inputs[0]))
    else:
        handle = layer.register_forward_hook(lambda module, inputs, output: seen.update(tensor=output))
    torch.manual_seed(0)
    try:
        with models.attention_math_kernel():
            logits = classifier.network((images - classifier.mean) / classifier.std)
            chosen = logits.gather(1, labels.view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(chosen, seen["tensor"])
    finally:
        handle.remove()
    activation = seen["tensor"]
    if layout == "output":
        cam = (grads.mean(dim=(2, 3))[:, :, None, None] * activation).sum(dim=1)
    elif layout == "output_channels_last":
        cam = (grads.mean(dim=(1, 2))[:, None, None, :] * activation).sum(dim=3)
    else:
        side = int((activation.shape[1] - 1) ** 0.5)
        tokens, token_grads = activation[:, 1:], grads[:, 1:]
        cam = (token_grads.mean(dim=1)[:, None, :] * tokens).sum(dim=2).view(-1, side, side)
    upsampled = F.interpolate(F.relu(cam)[:, None], size=images.shape[2:], mode="bilinear", align_corners=False)
    return upsampled[:, 0].detach(), logits.detach()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_the_map_is_grad_cam_of_the_architectures_layer_and_not_zero_at_init(name):
    torch.manual_seed(0)
    classifier = models.create(name, num_classes=4, image_size=SIZE).train()
    images, labels, _ = batch()
    features, logits, maps = classifier_map(classifier, images, labels)
    expected, expected_logits = independent_grad_cam(classifier, images, labels)
    assert features.shape[2:] == classifier.grid == (GRIDS[name][0],) * 2
    torch.testing.assert_close(logits.detach(), expected_logits)
    scale = expected.abs().max()
    assert scale > 0, "Grad-CAM is all zero after init"
    torch.testing.assert_close(maps.detach() / scale, expected / scale, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_one_camal_step_moves_relevance_mass_onto_the_mask(name):
    torch.manual_seed(0)
    classifier = models.create(name, num_classes=4, image_size=SIZE).train()
    images, labels, masks = batch()
    _, _, maps = classifier_map(classifier, images, labels)
    before = relevance_mass(maps.detach(), masks).nanmean()  # NaN: an all-zero map, which has no mass
    with models.attention_math_kernel():
        camal_loss(maps, masks).backward()
    gradient_norm = torch.sqrt(sum((p.grad**2).sum() for p in classifier.parameters() if p.grad is not None))
    assert torch.isfinite(gradient_norm) and gradient_norm > 0
    # one step of length 1e-2 in parameter space: the gradients' scale differs by 1000x between architectures
    torch.optim.SGD(classifier.parameters(), lr=1e-2 / float(gradient_norm)).step()
    _, _, maps = classifier_map(classifier, images, labels)
    after = relevance_mass(maps.detach(), masks).nanmean()
    assert after > before, f"relevance mass {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", models.REDUCED_MODELS)
def test_reduced_grids_are_4x4_or_finer_at_64_px_and_as_documented_at_96(name):
    assert models.create(name, 4, 64).grid == (GRIDS[name][0],) * 2
    assert GRIDS[name][0] >= 4
    assert models.create(name, 4, 96).grid == (GRIDS[name][1],) * 2


@pytest.mark.slow
@pytest.mark.parametrize("name", models.STANDARD_MODELS)
def test_standard_grids_at_96_px_are_as_documented(name):
    assert models.create(name, 4, 96).grid == (GRIDS[name][1],) * 2


@pytest.mark.parametrize("name", ["resnet_mini", "vit_mini", "swin_mini"])
def test_forward_is_the_torchvision_network_on_imagenet_normalised_input(name):
    classifier = models.create(name, 4, SIZE).eval()
    images, _, _ = batch()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = classifier(images)
        features, captured_logits = classifier.features_and_logits(images)
        torch.testing.assert_close(logits, classifier.network((images - mean) / std))
    torch.testing.assert_close(captured_logits, logits)  # capturing A changes nothing downstream
    assert logits.shape == (4, 4)


def test_vit_head_is_reinitialised_so_gradients_reach_the_body():
    classifier = models.create("vit_mini", 4, SIZE)
    assert classifier.network.heads.head.weight.abs().sum() > 0


def test_families_learning_rates_and_names():
    assert models.MODELS == models.STANDARD_MODELS + models.REDUCED_MODELS
    assert set(models.STANDARD_MODELS) == {"resnet50", "vit_b_16", "swin_t", "maxvit_t", "convnext_tiny",
                                           "efficientnet_b0"}  # fmt: skip
    families = {name: models.FAMILIES[models.ARCHITECTURES[name]] for name in models.MODELS}
    assert families["resnet50"] == families["convnext_mini"] == families["efficientnet_b0"] == "cnn"
    assert families["vit_b_16"] == families["swin_mini"] == "transformer"
    assert families["maxvit_t"] == "hybrid"
    assert models.create("maxvit_mini", 4, SIZE).family == "hybrid"
    for name in ("vit_b_16", "vit_mini", "swin_t", "maxvit_t", "maxvit_mini"):
        assert models.default_learning_rate(name) == 1e-4
    for name in ("resnet50", "convnext_tiny", "efficientnet_mini"):
        assert models.default_learning_rate(name) == 1e-3


@pytest.mark.parametrize(
    "name, size, words",
    [
        ("resnet_101", 64, ["unknown model 'resnet_101'", "valid:", "resnet50", "vit_mini"]),
        ("maxvit_t", 100, ["image size 100", "maxvit_t", "multiples of 32", "96, 128"]),
        ("maxvit_mini", 72, ["image size 72", "maxvit_mini", "64, 80"]),
        ("vit_b_16", 100, ["image size 100", "patch size", "multiples of 16", "96, 112"]),
        ("resnet_mini", 16, ["image size 16", ">= 32"]),
        ("resnet_mini", 64.0, ["image size", "integer"]),
    ],
)
def test_refusals_are_one_line_naming_what_is_valid(name, size, words):
    with pytest.raises(ValueError) as refusal:
        models.create(name, 4, size)
    message = str(refusal.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_maxvit_partition_fits_the_grid_at_each_size():
    assert [models.maxvit_partition_size("maxvit_t", size) for size in (64, 96, 128, 224)] == [2, 3, 4, 7]
    assert [models.maxvit_partition_size("maxvit_mini", size) for size in (64, 96, 128)] == [4, 6, 4]
    assert models.maxvit_partition_size("maxvit_t", 352) is None  # an 11 x 11 grid
    assert models.create("maxvit_mini", 4, 96).network.partition_size == 6


@pytest.mark.slow
def test_maxvit_t_at_224_px_is_torchvisions_maxvit_t():
    ours = models.create("maxvit_t", 1000, 224).network.state_dict()
    theirs = torchvision_compat.import_torchvision().models.maxvit_t().state_dict()
    assert {key: value.shape for key, value in ours.items()} == {key: value.shape for key, value in theirs.items()}


def test_weights_from_a_local_state_dict_reproduce_the_network(tmp_path):
    source = models.create("convnext_mini", 4, SIZE).eval()
    torch.save(source.network.state_dict(), tmp_path / "network.pt")
    torch.save(source.state_dict(), tmp_path / "classifier.pt")
    images, _, _ = batch()
    for path in (tmp_path / "network.pt", tmp_path / "classifier.pt"):
        loaded = models.create("convnext_mini", 4, SIZE, weights=str(path)).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(images), source(images))


def test_weights_for_another_number_of_classes_load_all_but_the_head(tmp_path):
    source = models.create("resnet_mini", 10, SIZE)
    torch.save(source.network.state_dict(), tmp_path / "ten_classes.pt")
    loaded = models.create("resnet_mini", 4, SIZE, weights=tmp_path / "ten_classes.pt")
    torch.testing.assert_close(loaded.network.layer4[0].conv1.weight, source.network.layer4[0].conv1.weight)
    assert loaded.network.fc.weight.shape == (4, 256)


def test_vit_weights_load_at_another_image_size_with_interpolated_position_embeddings(tmp_path):
    torch.save(models.create("vit_mini", 4, 64).network.state_dict(), tmp_path / "vit64.pt")
    loaded = models.create("vit_mini", 4, 96, weights=tmp_path / "vit64.pt")
    assert loaded.network.encoder.pos_embedding.shape == (1, 12 * 12 + 1, 96)


def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path):
    torch.save(models.create("resnet_mini", 4, SIZE).network.state_dict(), tmp_path / "resnet.pt")
    torch.save({"model": {"a": 1}}, tmp_path / "checkpoint.pt")
    for name, weights, words in (
        ("convnext_mini", tmp_path / "resnet.pt", ["do not fit convnext_mini", "missing", "unexpected"]),
        ("convnext_mini", tmp_path / "checkpoint.pt", ["holds no state dict"]),
        ("resnet50", "IMAGENET1K_V9", ["IMAGENET1K_V9", "DEFAULT", "IMAGENET1K_V2"]),
        ("resnet_mini", "DEFAULT", ["resnet_mini has no torchvision weights"]),
    ):
        with pytest.raises(ValueError) as refusal:
            models.create(name, 4, SIZE, weights=weights)
        assert "\n" not in str(refusal.value)
        for word in words:
            assert word in str(refusal.value)


def test_torchvision_weight_names_resolve_to_the_enum_without_a_download():
    tv_models = torchvision_compat.import_torchvision().models
    assert models.resolve_weights("resnet50", "DEFAULT") is tv_models.ResNet50_Weights.IMAGENET1K_V2
    assert models.resolve_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V1") is tv_models.ResNet50_Weights.IMAGENET1K_V1
    for name in models.STANDARD_MODELS:
        weights = models.resolve_weights(name, "DEFAULT")
        assert weights.url.endswith(".pth") and len(weights.meta["categories"]) == 1000


@pytest.mark.slow
def test_the_compat_shim_makes_torchvision_import_in_a_fresh_process_and_is_idempotent():
    program = (
        "import torch\n"
        "from vision.torchvision_compat import import_torchvision, define_missing_schemas\n"
        "first = import_torchvision()\n"
        "assert import_torchvision() is first\n"
        "assert define_missing_schemas() == []\n"
        "import torchvision\n"
        "assert torchvision is first\n"
        "print(torchvision.models.resnet18()(torch.rand(1, 3, 64, 64)).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.Size([1, 1000])" in result.stdout


def test_the_compat_shim_defines_only_the_missing_schemas():
    torchvision_compat.import_torchvision()
    assert all(torchvision_compat.has_operator(name) for name in torchvision_compat.MISSING_WHEN_UNLOADED)
    assert torchvision_compat.define_missing_schemas() == []
    assert not torchvision_compat.has_operator("no_such_operator")
