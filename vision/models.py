"""The image classifiers CAMAL trains in the supervised paradigm: six torchvision architectures, each with its
Grad-CAM layer defined once here (docs/vision.md).

``create(name, num_classes, image_size, weights=None)`` gives a :class:`Classifier`; ``MODELS`` lists the names.
The standard names are torchvision's builders (random init unless ``weights`` says otherwise); the ``*_mini``
names are reduced configurations of the same torchvision classes for CPU budgets, all with a total stride of
16 (ViT: patch 8), so that their Grad-CAM grids are 4 x 4 or finer at 64 px:

============== ========================= ============================================================ ===== =====
name           torchvision class         configuration                                                grid  grid
                                                                                                      64px  96px
============== ========================= ============================================================ ===== =====
resnet50       ResNet (Bottleneck)       torchvision's resnet50                                       2x2   3x3
resnet_mini    ResNet (BasicBlock)       1 block per stage, widths 32-64-128-256, no stem max-pool    4x4   6x6
vit_b_16       VisionTransformer         torchvision's vit_b_16 at the image size                     4x4   6x6
vit_mini       VisionTransformer         patch 8, 4 layers, 4 heads, hidden 96, MLP 192               8x8   12x12
swin_t         SwinTransformer           torchvision's swin_t                                         2x2   3x3
swin_mini      SwinTransformer           patch 4, embed 32, depths 2-2-2, heads 2-4-8, window 4       4x4   6x6
maxvit_t       MaxVit                    torchvision's maxvit_t, partition size fitted (see below)    2x2   3x3
maxvit_mini    MaxVit                    stem 16, widths 32-64-128, 1 layer each, head dim 16,        4x4   6x6
                                         MBConv expansion 2, partition size fitted
convnext_tiny  ConvNeXt                  torchvision's convnext_tiny                                  2x2   3x3
convnext_mini  ConvNeXt                  widths 32-64-128, 2 blocks each                              4x4   6x6
efficientnet_b0 EfficientNet             torchvision's efficientnet_b0                                2x2   3x3
efficientnet_mini EfficientNet           MBConv stages 16(e1)-24-40-80 (e4, k3, 1 block each),        4x4   6x6
                                         last conv 320, no dropout
============== ========================= ============================================================ ===== =====

(The grids are ``Classifier.grid``, measured by a forward pass: tests/test_vision_models.py checks them.) The
reduced configurations have no stochastic depth or dropout; the standard ones keep torchvision's.

Grad-CAM layers: ResNet ``layer4``; ConvNeXt and EfficientNet ``features[-1]``; Swin ``features[-1]``, whose
output is channels-last (B, h, w, K) and is permuted to (B, K, h, w); MaxViT the last block, ``blocks[-1]``;
ViT the patch tokens at the input of the last encoder block, ``encoder.layers[-1]``, without the class token,
reshaped to the patch grid. ViT's last block is not usable: only the class token reaches the head, so the map
of that block's output is exactly 0. torchvision initialises ViT's head to zero, which makes every gradient
below the head, hence its Grad-CAM and the CAMAL gradient, 0 at init: the head is re-initialised here with
``nn.Linear``'s default init (a loaded state dict that holds a head replaces it).

MaxViT's partition size must divide the grid of the stem and of every block (torchvision's maxvit_t uses 7,
which fits 224 px only); it is the largest size from 7 down to 2 that does: at 64 / 96 / 128 / 224 px, 2 / 3 /
4 / 7 for maxvit_t, 4 / 6 / 4 / 7 for maxvit_mini. Image sizes are multiples of the total stride (maxvit_t 32,
maxvit_mini 16) whose last grid has such a factor (not, e.g., 352 for maxvit_t: an 11 x 11 grid); others are
refused. ViT takes image sizes divisible by its patch size; every model, sizes from 32 px.

Learning rates (``default_learning_rate``): 1e-4 for ViT, Swin and MaxViT, as the paper; 1e-3 for the CNNs
(ResNet, ConvNeXt, EfficientNet), Adam's usual rate, a choice not tuned here.

ViT's attention runs through ``scaled_dot_product_attention``, whose fused CPU kernel has no double backward,
which Grad-CAM losses need: train under ``attention_math_kernel()``. Swin and MaxViT compute their attention
with plain matrix products and need nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn

from vision.torchvision_compat import import_torchvision

torchvision = import_torchvision()
from torchvision.models.convnext import CNBlockConfig, ConvNeXt  # noqa: E402
from torchvision.models.efficientnet import EfficientNet, MBConvConfig  # noqa: E402
from torchvision.models.maxvit import MaxVit  # noqa: E402
from torchvision.models.resnet import BasicBlock, ResNet  # noqa: E402
from torchvision.models.swin_transformer import SwinTransformer  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings  # noqa: E402

STANDARD_MODELS = ("resnet50", "vit_b_16", "swin_t", "maxvit_t", "convnext_tiny", "efficientnet_b0")
REDUCED_MODELS = ("resnet_mini", "vit_mini", "swin_mini", "maxvit_mini", "convnext_mini", "efficientnet_mini")
MODELS = STANDARD_MODELS + REDUCED_MODELS

ARCHITECTURES = {
    "resnet50": "resnet", "resnet_mini": "resnet",
    "vit_b_16": "vit", "vit_mini": "vit",
    "swin_t": "swin", "swin_mini": "swin",
    "maxvit_t": "maxvit", "maxvit_mini": "maxvit",
    "convnext_tiny": "convnext", "convnext_mini": "convnext",
    "efficientnet_b0": "efficientnet", "efficientnet_mini": "efficientnet",
}  # fmt: skip
FAMILIES = {
    "resnet": "cnn", "convnext": "cnn", "efficientnet": "cnn",
    "vit": "transformer", "swin": "transformer",
    "maxvit": "hybrid",
}  # fmt: skip
LEARNING_RATES = {"cnn": 1e-3, "transformer": 1e-4, "hybrid": 1e-4}

MIN_IMAGE_SIZE = 32
VIT_PATCH_SIZES = {"vit_b_16": 16, "vit_mini": 8}
# maxvit_t as torchvision's builder makes it, but for the partition size, which the builder fixes at 7
MAXVIT_T = dict(stem_channels=64, block_channels=[64, 128, 256, 512], block_layers=[2, 2, 5, 2], head_dim=32,
                stochastic_depth_prob=0.2)  # fmt: skip
MAXVIT_MINI = dict(stem_channels=16, block_channels=[32, 64, 128], block_layers=[1, 1, 1], head_dim=16,
                   stochastic_depth_prob=0.0, expansion_ratio=2)  # fmt: skip
MAXVIT_CONFIGS = {"maxvit_t": MAXVIT_T, "maxvit_mini": MAXVIT_MINI}
LARGEST_PARTITION = 7  # torchvision's maxvit_t

# torchvision's weights expect ImageNet-normalised RGB
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_learning_rate(name: str) -> float:
    """The learning rate a model trains with unless told otherwise: 1e-4 for ViT, Swin, MaxViT; 1e-3 for CNNs."""
    check_name(name)
    return LEARNING_RATES[FAMILIES[ARCHITECTURES[name]]]


def attention_math_kernel(enabled: bool = True):
    """Context manager: ``scaled_dot_product_attention`` runs its plain (math) kernel, which has a double backward.

    Needed while a Grad-CAM loss (``--attn-loss camal|rrr|entropy``) trains ViT, whose fused CPU kernel has no
    double backward; the other architectures do not call that function, so for them it changes nothing, and
    ``enabled=False`` (no attention loss) leaves the fast kernels in place.
    """
    if not enabled:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; valid: {', '.join(MODELS)}")


def maxvit_grids(name: str, image_size: int) -> list[int]:
    """Side of the stem's output and of each MaxViT block's grid (each halves: a stride-2 3x3 conv, padding 1)."""
    grids = [(image_size - 1) // 2 + 1]
    for _ in MAXVIT_CONFIGS[name]["block_channels"]:
        grids.append((grids[-1] - 1) // 2 + 1)
    return grids


def maxvit_partition_size(name: str, image_size: int) -> int | None:
    """The largest partition size from 7 down to 2 dividing every grid, for an image size that every stage halves
    exactly (a multiple of the total stride); None if there is none."""
    grids = maxvit_grids(name, image_size)
    if image_size != grids[-1] * 2 ** (len(grids)):
        return None
    for size in range(LARGEST_PARTITION, 1, -1):
        if all(grid % size == 0 for grid in grids):
            return size
    return None


def image_size_fits(name: str, image_size: int) -> bool:
    if image_size < MIN_IMAGE_SIZE:
        return False
    if name in VIT_PATCH_SIZES:
        return image_size % VIT_PATCH_SIZES[name] == 0
    if name in MAXVIT_CONFIGS:
        return maxvit_partition_size(name, image_size) is not None
    return True


def check_image_size(name: str, image_size: int) -> None:
    """Raise a one-line ValueError naming the valid sizes near ``image_size`` if ``name`` cannot take it."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"image size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if image_size_fits(name, image_size):
        return
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is too small for {name}; valid: integers >= {MIN_IMAGE_SIZE}")
    below = next((s for s in range(image_size - 1, MIN_IMAGE_SIZE - 1, -1) if image_size_fits(name, s)), None)
    above = next(s for s in range(image_size + 1, 100 * image_size) if image_size_fits(name, s))
    near = ", ".join(str(s) for s in (below, above) if s is not None)
    if name in VIT_PATCH_SIZES:
        problem, valid = f"is not a multiple of {name}'s patch size", f"multiples of {VIT_PATCH_SIZES[name]}"
    else:
        stride = 2 ** len(maxvit_grids(name, image_size))
        problem = f"fits no partition size of {name}"
        valid = f"multiples of {stride} whose size / {stride} has a factor from 2 to {LARGEST_PARTITION}"
    raise ValueError(f"image size {image_size} {problem}; valid: {valid}, the nearest {near}")


def narrow_resnet(network: ResNet, width: int) -> ResNet:
    """``network``'s stem and stages rebuilt ``width`` channels wide (torchvision fixes 64), initialised as ResNet does."""
    blocks = [len(stage) for stage in (network.layer1, network.layer2, network.layer3, network.layer4)]
    network.inplanes = width
    network.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    network.bn1 = nn.BatchNorm2d(width)
    network.layer1 = network._make_layer(BasicBlock, width, blocks[0])
    network.layer2 = network._make_layer(BasicBlock, 2 * width, blocks[1], stride=2)
    network.layer3 = network._make_layer(BasicBlock, 4 * width, blocks[2], stride=2)
    network.layer4 = network._make_layer(BasicBlock, 8 * width, blocks[3], stride=2)
    network.fc = nn.Linear(8 * width, network.fc.out_features)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return network


def build_network(name: str, num_classes: int, image_size: int) -> nn.Module:
    """The torchvision network ``name`` with random weights (sizes already checked)."""
    if name == "vit_b_16":
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, image_size=image_size)
    if name in MAXVIT_CONFIGS:
        return MaxVit(input_size=(image_size, image_size), partition_size=maxvit_partition_size(name, image_size),
                      num_classes=num_classes, **MAXVIT_CONFIGS[name])  # fmt: skip
    if name in STANDARD_MODELS:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if name == "resnet_mini":
        network = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        network.maxpool = nn.Identity()  # stride 16, not 32: a 4x4 grid at 64 px
        return narrow_resnet(network, width=32)
    if name == "vit_mini":
        return VisionTransformer(image_size=image_size, patch_size=8, num_layers=4, num_heads=4, hidden_dim=96,
                                 mlp_dim=192, num_classes=num_classes)  # fmt: skip
    if name == "swin_mini":
        return SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 8],
                               window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=num_classes)  # fmt: skip
    if name == "convnext_mini":
        stages = [CNBlockConfig(32, 64, 2), CNBlockConfig(64, 128, 2), CNBlockConfig(128, None, 2)]
        return ConvNeXt(stages, stochastic_depth_prob=0.0, num_classes=num_classes)
    if name == "efficientnet_mini":
        stages = [MBConvConfig(1, 3, 1, 16, 16, 1), MBConvConfig(4, 3, 2, 16, 24, 1),
                  MBConvConfig(4, 3, 2, 24, 40, 1), MBConvConfig(4, 3, 2, 40, 80, 1)]  # fmt: skip
        return EfficientNet(stages, dropout=0.0, stochastic_depth_prob=0.0, num_classes=num_classes, last_channel=320)
    raise AssertionError(name)


def gradcam_layer(architecture: str, network: nn.Module) -> nn.Module:
    """The module whose output (ViT: input) is the Grad-CAM layer: the one place each architecture's is defined."""
    if architecture == "resnet":
        return network.layer4
    if architecture in ("convnext", "efficientnet", "swin"):
        return network.features[-1]
    if architecture == "maxvit":
        return network.blocks[-1]
    if architecture == "vit":
        return network.encoder.layers[-1]
    raise AssertionError(architecture)


def head_layer(architecture: str, network: nn.Module) -> nn.Module:
    """The last linear layer, whose shape depends on the number of classes."""
    return {
        "resnet": lambda: network.fc,
        "vit": lambda: network.heads.head,
        "swin": lambda: network.head,
        "maxvit": lambda: network.classifier[-1],
        "convnext": lambda: network.classifier[-1],
        "efficientnet": lambda: network.classifier[-1],
    }[architecture]()


class Classifier(nn.Module):
    """A torchvision classifier with its Grad-CAM layer exposed.

    Input: float (B, 3, S, S) RGB in [0, 1], S the ``image_size`` it was made for; the classifier normalises it
    with ImageNet's mean and std itself (what torchvision's pretrained weights expect), so callers don't.
    ``forward`` gives the logits (B, num_classes); ``features_and_logits`` also the Grad-CAM layer's activation
    A (B, K, h, w), on the autograd graph between the input and the logits, so that
    ``agents.attention.grad_cam(A, logits, labels, (S, S))`` is the differentiable map. ``grid`` is (h, w);
    ``family`` is "cnn", "transformer" or "hybrid"; ``network`` the torchvision module, unchanged.
    """

    def __init__(self, name: str, network: nn.Module, image_size: int):
        super().__init__()
        self.name = name
        self.architecture = ARCHITECTURES[name]
        self.family = FAMILIES[self.architecture]
        self.image_size = image_size
        self.network = network
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._capturing = False
        self._captured: torch.Tensor | None = None
        layer = gradcam_layer(self.architecture, network)
        if self.architecture == "vit":
            layer.register_forward_pre_hook(self._capture_patch_tokens)
        elif self.architecture == "swin":
            layer.register_forward_hook(self._capture_channels_last)
        else:
            layer.register_forward_hook(self._capture_output)
        self.grid = self._measure_grid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - self.mean) / self.std)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._capturing = True
        try:
            logits = self(x)
        finally:
            self._capturing = False
        features, self._captured = self._captured, None
        return features, logits

    # Forward hooks that return a value replace the layer's output (pre-hooks: its input), so the rest of the
    # network computes from A itself and autograd.grad(logits, A) is defined. They act only while capturing.
    def _capture_output(self, module, inputs, output):
        if self._capturing:
            self._captured = output

    def _capture_channels_last(self, module, inputs, output):
        if self._capturing:
            self._captured = output.permute(0, 3, 1, 2)
            return self._captured.permute(0, 2, 3, 1)

    def _capture_patch_tokens(self, module, inputs):
        if self._capturing:
            (tokens,) = inputs
            batch, _, hidden = tokens.shape
            side = self.image_size // VIT_PATCH_SIZES[self.name]
            self._captured = tokens[:, 1:].transpose(1, 2).reshape(batch, hidden, side, side)
            return (torch.cat([tokens[:, :1], self._captured.flatten(2).transpose(1, 2)], dim=1),)

    def _measure_grid(self) -> tuple[int, int]:
        """(h, w) of A, from a forward pass on the meta device (shapes only, no arithmetic)."""
        meta_state = {key: torch.empty_like(value, device="meta")
                      for key, value in list(self.named_parameters()) + list(self.named_buffers())}  # fmt: skip
        image = torch.empty(1, 3, self.image_size, self.image_size, device="meta")
        self._capturing = True
        try:
            with torch.no_grad():
                torch.func.functional_call(self, meta_state, (image,))
        finally:
            self._capturing = False
        grid, self._captured = tuple(self._captured.shape[2:]), None
        return grid


def resolve_weights(name: str, weights: str | Path):
    """A local file (Path) or torchvision's weights enum member for ``weights`` ("DEFAULT", "IMAGENET1K_V1",
    "ResNet50_Weights.DEFAULT"); nothing is downloaded here. One-line ValueError if it is neither."""
    path = Path(weights)
    if path.is_file():
        return path
    choice = str(weights).split(".")[-1]
    if name in REDUCED_MODELS:
        raise ValueError(f"weights '{weights}' is no file, and {name} has no torchvision weights; "
                         f"valid: a local state dict file")  # fmt: skip
    enum = torchvision.models.get_model_weights(name)
    if choice not in enum.__members__:
        raise ValueError(f"weights '{weights}' is neither a file nor one of {name}'s torchvision weights; "
                         f"valid: a local state dict file, {', '.join(enum.__members__)}")  # fmt: skip
    return enum[choice]


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """The state dict in a file (a torchvision network's, or a Classifier's) or of a weights enum member (this
    downloads, into torch's hub cache, unless it is there already)."""
    if isinstance(source, Path):
        state = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
            raise ValueError(f"{source} holds no state dict (a dict of tensors, as torch.save(model.state_dict()))")
    else:
        state = source.get_state_dict(progress=True, check_hash=True)
    if state and all(key.startswith("network.") for key in state):
        state = {key.removeprefix("network."): value for key, value in state.items()}
    return dict(state)


def load_state(classifier: Classifier, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``classifier.network``: ViT's position embeddings are interpolated to the image size,
    a head of another number of classes is left at its init, any other difference is a one-line ValueError."""
    network = classifier.network
    own = network.state_dict()
    if classifier.architecture == "vit" and "encoder.pos_embedding" in state:
        if state["encoder.pos_embedding"].shape != own["encoder.pos_embedding"].shape:
            patch = VIT_PATCH_SIZES[classifier.name]
            state = dict(interpolate_embeddings(classifier.image_size, patch, state))
    head_prefix = next(key for key, module in network.named_modules() if module is head_layer(classifier.architecture, network))
    head_keys = {f"{head_prefix}.{key}" for key in head_layer(classifier.architecture, network).state_dict()}
    state = {key: value for key, value in state.items() if not (key in head_keys and value.shape != own[key].shape)}
    missing = [key for key in own if key not in state and key not in head_keys]
    unexpected = [key for key in state if key not in own]
    mismatched = [key for key in state if key in own and state[key].shape != own[key].shape]
    if missing or unexpected or mismatched:
        problems = [f"{len(keys)} {kind} (e.g. {keys[0]}{detail(keys[0])})"
                    for kind, keys, detail in (
                        ("missing", missing, lambda key: ""),
                        ("unexpected", unexpected, lambda key: ""),
                        ("of another shape", mismatched,
                         lambda key: f": {tuple(state[key].shape)}, not {tuple(own[key].shape)}"))
                    if keys]  # fmt: skip
        raise ValueError(f"weights {source} do not fit {classifier.name} at {classifier.image_size} px: "
                         f"tensors {'; '.join(problems)}")  # fmt: skip
    network.load_state_dict(state, strict=False)


def create(name: str, num_classes: int, image_size: int, weights: str | Path | None = None) -> Classifier:
    """The classifier ``name`` for ``num_classes`` classes and (image_size, image_size) RGB input.

    ``weights``: None (random init), a local state dict file, or a torchvision weights name of a standard model
    ("DEFAULT", "IMAGENET1K_V1", ...; downloaded by torchvision on first use). One-line ValueError for an
    unknown name, an image size the architecture cannot take, or weights that do not fit.
    """
    check_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    check_image_size(name, image_size)
    source = resolve_weights(name, weights) if weights is not None else None
    network = build_network(name, num_classes, image_size)
    if ARCHITECTURES[name] == "vit":
        network.heads.head.reset_parameters()  # torchvision's zero head leaves no gradient below it
    classifier = Classifier(name, network, image_size)
    if source is not None:
        load_state(classifier, read_state_dict(source), str(weights))
    return classifier
