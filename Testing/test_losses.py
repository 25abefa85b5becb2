"""The self-supervised losses on cases whose answer is known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from RegisterByGenerationLib.errors import InputError
from RegisterByGenerationLib.losses import (
    ContextualLoss,
    LSGANLoss,
    PatchDiscriminator,
    PatchNCELoss,
    PatchProjection,
    SoftBoneDiceLoss,
    VGG19Features,
    contextual_similarity,
    registration_loss,
    smoothness,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- PatchNCE


def test_patchnce_prefers_matching_positions():
    torch.manual_seed(0)
    heads = PatchProjection([8, 16], out_features=32)
    loss = PatchNCELoss(temperature=0.07)
    features = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    same = loss(*heads(features, features, num_patches=64, generator=_generator()))
    shuffled_keys = [f.flatten(2)[:, :, torch.randperm(f.shape[2] * f.shape[3])].view_as(f) for f in features]
    shuffled = loss(*heads(features, shuffled_keys, num_patches=64, generator=_generator()))
    assert same.item() < shuffled.item() - 1.0


def test_patchnce_is_log_s_for_uninformative_and_small_for_orthogonal_codes():
    loss = PatchNCELoss(temperature=0.07)
    constant = torch.nn.functional.normalize(torch.ones(1, 10, 4), dim=-1)
    assert loss([constant], [constant]).item() == pytest.approx(math.log(10), abs=1e-5)
    codes = torch.eye(10).unsqueeze(0)  # each position its own orthogonal unit vector
    assert loss([codes], [codes]).item() < 1e-5


def test_patchnce_gradient_reaches_queries_and_heads_but_not_keys():
    heads = PatchProjection([4])
    q = torch.randn(1, 4, 8, 8, requires_grad=True)
    k = torch.randn(1, 4, 8, 8, requires_grad=True)
    PatchNCELoss()(*heads([q], [k], num_patches=16, generator=_generator())).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None
    assert all(p.grad is not None for p in heads.parameters())


def test_patchnce_rejects_mismatched_layers():
    heads = PatchProjection([4, 8])
    with pytest.raises(ValueError, match="expected 2 feature layers"):
        heads([torch.zeros(1, 4, 4, 4)], [torch.zeros(1, 4, 4, 4)])
    with pytest.raises(ValueError, match=r"must both be \[B, 8, H, W\]"):
        heads([torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)], [torch.zeros(1, 4, 4, 4)] * 2)
    with pytest.raises(ValueError, match="temperature"):
        PatchNCELoss(temperature=0.0)


# --------------------------------------------------------------------------- contextual


def test_contextual_loss_is_zero_for_identical_and_positive_for_different():
    torch.manual_seed(1)
    loss = ContextualLoss(band_width=0.5, max_positions=None)
    features = [torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    assert loss(features, features).item() < 1e-3
    other = [torch.randn_like(f) for f in features]
    assert loss(features, other).item() > 0.5


def test_contextual_loss_ignores_where_features_are():
    """A spatial permutation keeps every feature: CX stays 1 (what makes it misalignment-tolerant)."""
    torch.manual_seed(2)
    features = torch.randn(1, 16, 6, 6)
    permuted = features.flatten(2)[:, :, torch.randperm(36)].view_as(features)
    loss = ContextualLoss(max_positions=None)
    assert loss([permuted], [features]).item() < 1e-3
    # whereas a pixel-wise loss would see the permutation
    assert torch.nn.functional.l1_loss(permuted, features).item() > 0.5


def test_contextual_similarity_hand_case():
    """Two references, one exact match: CX = max_j softmax_j((1 - d̃_ij) / h) = 1 / (1 + e^{-big})."""
    x = torch.tensor([[[1.0, 0.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # centred on y's mean (0.5, 0.5): x → (0.5, -0.5) matches y_0 exactly, y_1 is opposite.
    assert contextual_similarity(x, y, 0.5).item() == pytest.approx(1.0, abs=1e-6)


def test_contextual_loss_subsamples_large_layers_reproducibly():
    loss = ContextualLoss(max_positions=32)
    a, b = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)
    first = loss([a], [b], generator=_generator(5))
    again = loss([a], [b], generator=_generator(5))
    assert first.item() == again.item()


# --------------------------------------------------------------------------- LSGAN


def test_lsgan_targets():
    gan = LSGANLoss()
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert gan(ones, True).item() == 0.0
    assert gan(zeros, False).item() == 0.0
    assert gan(zeros, True).item() == 1.0
    assert gan(torch.full((3,), 0.5), True).item() == pytest.approx(0.25)
    assert gan.discriminator_loss(ones, zeros).item() == 0.0
    assert gan.discriminator_loss(zeros, ones).item() == 1.0
    assert gan.generator_loss(zeros).item() == 1.0
    with pytest.raises(ValueError, match="target_is_real"):
        gan(ones, 1)


def test_patch_discriminator_scores_patches():
    disc = PatchDiscriminator(channels=8, layers=3)
    scores = disc(torch.zeros(2, 1, 96, 96))
    assert scores.shape == (2, 1, 10, 10)  # pix2pix's 70×70 PatchGAN on 96×96
    with pytest.raises(ValueError, match="channels"):
        PatchDiscriminator(channels=0)


# --------------------------------------------------------------------------- smoothness


def test_smoothness_zero_for_constant_flow_and_hand_value_for_a_ramp():
    assert smoothness(torch.full((2, 2, 8, 8), -4.5)).item() == 0.0
    ramp = torch.zeros(1, 2, 5, 5)
    ramp[:, 1] = torch.arange(5.0).view(1, 5)  # dx grows by 1 per column
    # ∂/∂x of channel 1 is 1 everywhere (20 differences), all else 0: ½ (0 + 20 / 40) = 0.25
    assert smoothness(ramp).item() == pytest.approx(0.25)


def test_registration_loss_is_zero_for_a_perfect_translation():
    moving = torch.zeros(1, 1, 16, 16)
    moving[0, 0, 6:10, 8:12] = 1.0
    fixed = torch.roll(moving, shifts=(-2, 0), dims=(2, 3))  # fixed(p) = moving(p + (2, 0))
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = 2.0
    total, parts = registration_loss(fixed, moving, flow, smooth_weight=0.5)
    assert total.item() == pytest.approx(0.0, abs=1e-7)
    wrong, _ = registration_loss(fixed, moving, torch.zeros_like(flow))
    assert wrong.item() > 0.01
    assert set(parts) == {"mse", "smooth"}


# --------------------------------------------------------------------------- VGG-19


@pytest.fixture(scope="module")
def torchvision_layout_state() -> dict[str, torch.Tensor]:
    """A full-depth VGG-19 state dict with torchvision's key names, plus a classifier.

    Two layers hold random values to check what is loaded; the rest are constants
    expanded to their shapes (one stored element each, so the files stay small).
    """
    shapes = {f"features.{k}": v.shape for k, v in VGG19Features(("conv5_4",)).features.state_dict().items()}
    generator = _generator(3)
    state = {key: torch.full((1,) * len(shape), 0.01).expand(shape) for key, shape in shapes.items()}
    for key in ("features.2.weight", "features.12.weight"):
        state[key] = torch.randn(shapes[key], generator=generator)
    state["classifier.0.weight"] = torch.zeros(4, 2)
    return state


def test_vgg_loads_torchvision_layout_strictly(tmp_path, torchvision_layout_state):
    state = torchvision_layout_state
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    net = VGG19Features(("conv1_2", "conv2_2", "conv3_2"), weights=path)
    assert torch.equal(net.features[2].weight, state["features.2.weight"])
    assert torch.equal(net.features[12].weight, state["features.12.weight"])
    assert net.description.startswith("vgg19-imagenet (file vgg19.pth, sha256 ")
    assert not any(p.requires_grad for p in net.parameters())
    random = VGG19Features(("conv1_2",), seed=0)
    assert random.description == "vgg19-random (He init, random biases, seed 0)"
    assert torch.equal(random.features[0].weight, VGG19Features(("conv1_2",), seed=0).features[0].weight)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("features.7.weight"), "missing: features.7.weight"),
        (lambda s: s.pop("features.34.bias"), "missing: features.34.bias"),
        (lambda s: s.update({"features.2.weight": torch.zeros(64, 64, 5, 5)}), "wrong shape: features.2.weight"),
        (lambda s: s.update({"encoder.0.weight": torch.zeros(1)}), "unexpected: encoder.0.weight"),
    ],
)
def test_vgg_rejects_a_wrong_state_dict(tmp_path, torchvision_layout_state, edit, message):
    state = dict(torchvision_layout_state)
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(InputError, match=message):
        VGG19Features(("conv1_2", "conv2_2", "conv3_2"), weights=path)


def test_vgg_rejects_missing_or_garbage_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        VGG19Features(("conv1_2",), weights=tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        VGG19Features(("conv1_2",), weights=garbage)
    with pytest.raises(ValueError, match="conv9_9"):
        VGG19Features(("conv9_9",))


def test_vgg_features_shapes_and_stays_frozen():
    net = VGG19Features(("conv3_2", "conv1_2"))
    assert net.layers == ("conv1_2", "conv3_2")
    net.train()
    assert not net.training
    features = net(torch.zeros(2, 1, 32, 32))
    assert [tuple(f.shape) for f in features] == [(2, 64, 32, 32), (2, 256, 8, 8)]


def test_random_vgg_tells_flat_intensities_apart():
    """With zero biases every flat region gives the same feature direction (a ReLU net is
    positively homogeneous); the random biases make air and soft tissue differ."""
    net = VGG19Features(("conv1_2",), seed=0)
    air, soft_tissue = (net(torch.full((1, 1, 16, 16), value))[0][0, :, 8, 8] for value in (-0.9, -0.5))
    assert torch.nn.functional.cosine_similarity(air, soft_tissue, dim=0).item() < 0.97


# --------------------------------------------------------------------------- soft bone Dice


def test_soft_bone_dice_is_the_naive_formula_and_tends_to_the_hard_dice():
    """1 − 2 Σ p t / (Σ p + Σ t) with p = σ((ŷ − t) / s) over the whole batch; as s → 0
    it becomes 1 − Dice of the thresholded masks, which the benchmark reports."""
    torch.manual_seed(0)
    output, target = torch.rand(3, 1, 16, 16) * 2 - 1, torch.rand(3, 1, 16, 16) * 2 - 1
    loss = SoftBoneDiceLoss(threshold=0.2, softness=0.05)
    p, t = torch.sigmoid((output - 0.2) / 0.05), (target > 0.2).float()
    naive = 1 - (2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5)
    assert float(loss(output, target)) == pytest.approx(float(naive), rel=1e-5)
    hard_p = output > 0.2
    hard = 1 - 2 * float((hard_p & (target > 0.2)).sum()) / float(hard_p.sum() + (target > 0.2).sum())
    assert float(SoftBoneDiceLoss(0.2, 1e-6)(output, target)) == pytest.approx(hard, abs=1e-4)
    assert float(loss(target, target)) < float(loss(output, target))


def test_soft_bone_dice_pushes_missed_bone_up_and_false_bone_down():
    target = torch.full((1, 1, 4, 4), -1.0)
    target[..., :2, :] = 0.5  # bone in the top half
    output = torch.full((1, 1, 4, 4), 0.19, requires_grad=True)  # just below the threshold everywhere
    SoftBoneDiceLoss(threshold=0.2, softness=0.05)(output, target).backward()
    assert (output.grad[..., :2, :] < 0).all() and (output.grad[..., 2:, :] > 0).all()
    with pytest.raises(ValueError, match="softness must be positive"):
        SoftBoneDiceLoss(0.2, 0.0)

