"""The three training phases of RbG: what is trained, on which losses, and what is frozen.

- :class:`Stage1Phase`: the synthesis network ``ŷ = G(x, y)`` with a PatchGAN
  discriminator; loss ``5·NCE(ŷ, x) + 5·CX(ŷ, y) + 1·GAN`` (RbG §IV-B-1). PatchNCE
  uses G's own encoder features (CUT): the features G computes for ``x`` are the keys,
  the features it computes when fed ``ŷ`` the queries.
- :class:`RegistrationPhase`: ``φ = R(fixed=ŷ, moving=y)`` on the frozen Stage 1's
  output; loss ``MSE(ŷ, warp(y, φ)) + 0.5·smooth(φ)`` (§IV-B-2).
- :class:`Stage2Phase`: ``ỹ = F(x, ŷ, y, φ)`` with Stage 1 and R frozen, a new
  discriminator; loss ``1·NCE(ỹ, x) + 10·CX(ỹ, y shifted) + 1·GAN`` (§IV-B-3). NCE
  on VGG-19 ``conv4_2``/``conv5_4`` with ImageNet weights; without them on the frozen
  Stage 1 encoder (see ``docs/training.md``). The contextual loss compares with the
  reference cropped up to 10 pixels away, so copying the reference in place is not
  rewarded.

The optional identity and pixel terms (off in every preset) are described in
:class:`~.config.TrainingConfig`.

Every phase draws its randomness (Stage 1 noise, NCE and CX positions) from two
generators owned by the trainer, saved in checkpoints for exact resumption. The
discriminator step sees real and fake in one forward (one DDP forward per backward);
the generator step scores the fake through the bare discriminator with its gradients
off, so DDP never waits for gradients that do not come.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..losses import ContextualLoss, LSGANLoss, PatchDiscriminator, PatchNCELoss, PatchProjection, SoftBoneDiceLoss, VGG19Features, registration_loss
from ..networks import AdaINGenerator, FusionUNet, PAdaINGenerator, RbgModel, warp
from .config import LossWeights, TrainingConfig
from .distributed import DistributedContext, unwrap, wrap_ddp

__all__ = [
    "FeatureTap",
    "stage1_feature_layers",
    "Phase",
    "Stage1Phase",
    "RegistrationPhase",
    "Stage2Phase",
    "build_phase",
    "feature_network_description",
]


def stage1_feature_layers(stage1: nn.Module) -> list[nn.Module]:
    """The encoder layers of a Stage 1 network whose outputs PatchNCE compares.

    PAdaIN: the stem (H), and the instance-normalised convolution outputs (before the
    reference's γ, β modulation) of both downsampling blocks (H/2, H/4) and of the middle
    bottleneck block. Taking them before the modulation matters: γ starts near zero
    (N(0, 0.02²) initialisation), so the modulated outputs are at first dominated by
    the reference's β, every position projects to nearly the same vector and InfoNCE
    sits at log S with no usable gradient. The normalised features carry the input's
    structure from the first step, like the IN + ReLU features CUT uses.
    AdaIN: the content encoder after each of its three convolutions and after its last
    residual block (already normalised).
    """
    if isinstance(stage1, PAdaINGenerator):
        middle = stage1.bottleneck[len(stage1.bottleneck) // 2]
        return [stage1.stem, stage1.down[0].norm, stage1.down[1].norm, middle.norm]
    elif isinstance(stage1, AdaINGenerator):
        encoder = stage1.content_encoder
        return [encoder[2], encoder[5], encoder[8], encoder[len(encoder) - 1]]
    elif isinstance(stage1, FusionUNet):
        return stage1.encoder_layers()
    else:
        raise TypeError(f"no PatchNCE layers known for {type(stage1).__name__}")


class FeatureTap:
    """Collect the outputs of some modules during forward passes (forward hooks)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self._outputs: list[torch.Tensor] = []
        self._handles: list = []

    @contextmanager
    def active(self) -> Iterator[FeatureTap]:
        self._outputs = []
        self._handles = [m.register_forward_hook(lambda _m, _i, out: self._outputs.append(out)) for m in self.modules]
        try:
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def take(self) -> list[torch.Tensor]:
        """The outputs captured since the last call, in the order of ``modules``."""
        outputs, self._outputs = self._outputs, []
        if len(outputs) != len(self.modules):
            raise RuntimeError(f"expected {len(self.modules)} tapped outputs, got {len(outputs)}")
        return outputs


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


def _freeze(module: nn.Module) -> None:
    _set_requires_grad(module, False)
    module.eval()


def _adam(modules: Sequence[nn.Module], lr: float, betas, weight_decay: float) -> torch.optim.Adam:
    parameters = [p for m in modules for p in m.parameters() if p.requires_grad]
    return torch.optim.Adam(parameters, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


class Phase:
    """Common machinery: the model, the trainable extras, optimizers and the step.

    Subclasses set ``name``, ``loss_names``, build ``self.extras`` (modules checkpointed
    beside the model) and ``self.optimizers``, and implement :meth:`train_step` and
    :meth:`predict`.
    """

    name = ""
    loss_names: tuple[str, ...] = ()

    def __init__(self, model: RbgModel, config: TrainingConfig, context: DistributedContext,
                 sample_generator: torch.Generator, noise_generator: torch.Generator) -> None:  # fmt: skip
        self.model = model
        self.config = config
        self.settings = config.phase(self.name)
        self.context = context
        self.device = context.device
        self.sample_generator = sample_generator
        self.noise_generator = noise_generator
        self.extras: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode outputs on whole slices for validation."""
        raise NotImplementedError

    def train_mode(self) -> None:
        """Put trained modules in training mode and frozen ones in eval mode."""
        raise NotImplementedError

    def _adversarial_setup(self, weights: LossWeights) -> None:
        self.weights = weights
        self.gan = LSGANLoss()
        self.nce = PatchNCELoss(self.config.nce_temperature)
        self.cx = ContextualLoss(self.config.cx_band_width, self.config.cx_max_positions)
        discriminator = PatchDiscriminator(1, self.config.discriminator_channels, self.config.discriminator_layers).to(self.device)
        self.extras["discriminator"] = discriminator
        self.discriminator = wrap_ddp(discriminator, self.context)

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        discriminator = unwrap(self.discriminator)
        _set_requires_grad(discriminator, True)
        scores = self.discriminator(torch.cat([real, fake.detach()]))
        loss = self.gan.discriminator_loss(scores[: real.shape[0]], scores[real.shape[0] :])
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["discriminator"].step()
        _set_requires_grad(discriminator, False)
        return loss.detach()

    def _extra_weight(self, term: str) -> float:
        """The phase's weight of an optional ``"identity"``, ``"pixel"`` or ``"bone"`` term."""
        return getattr(self.config, f"{self.name}_{term}_weight")

    def _identity(self, forward, y: torch.Tensor) -> torch.Tensor:
        """CycleGAN's identity loss ``L1(net(y as input), y)`` when its weight is positive, else 0."""
        if self._extra_weight("identity") <= 0:
            return torch.zeros((), device=y.device)
        return torch.nn.functional.l1_loss(forward(), y)

    def _pixel(self, output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``L1(output, reference)`` when the phase's pixel weight is positive, else 0
        (see :class:`~.config.TrainingConfig`)."""
        if self._extra_weight("pixel") <= 0:
            return torch.zeros((), device=output.device)
        return torch.nn.functional.l1_loss(output, reference)

    def _bone(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The soft bone Dice term against the pixel term's target when the phase's bone
        weight is positive, else 0 (see :class:`~.config.TrainingConfig`)."""
        if self._extra_weight("bone") <= 0:
            return torch.zeros((), device=output.device)
        return SoftBoneDiceLoss(*self.config.bone_threshold())(output, target)

    def _adversarial_terms(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(discriminator loss after its step, generator's LSGAN term)``; both 0 and no
        discriminator step when the GAN weight is 0 (a CPU recipe without it)."""
        if self.weights.gan <= 0:
            zero = torch.zeros((), device=fake.device)
            return zero, zero
        loss_d = self._discriminator_step(real, fake)
        return loss_d, self.gan.generator_loss(unwrap(self.discriminator)(fake))

    def _pixel_target(self, batch: dict[str, torch.Tensor], reference: torch.Tensor) -> torch.Tensor:
        """What the pixel term compares with: ``reference``, or the case's pixel target
        (the registered reference or the aligned CT, see ``pixel_target``)."""
        if self.config.pixel_target != "reference":
            return batch["y_target"].to(self.device, non_blocking=True)
        return reference

    def _generator_step(self, discriminator: torch.Tensor, **terms: torch.Tensor) -> dict[str, float]:
        """One optimiser step on the weighted sum of the generator's ``terms`` (nce, cx,
        gan, identity, pixel, bone); returns every loss as a float."""
        w = self.weights
        total = w.nce * terms["nce"] + w.cx * terms["cx"] + w.gan * terms["gan"]
        total = total + sum(self._extra_weight(term) * terms[term] for term in ("identity", "pixel", "bone"))
        self.optimizers["generator"].zero_grad(set_to_none=True)
        total.backward()
        self.optimizers["generator"].step()
        return _floats(total=total, **terms, discriminator=discriminator)

    def _batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(batch[key].to(self.device, non_blocking=True) for key in ("x", "y", "y_shifted"))


class Stage1Phase(Phase):
    name = "stage1"
    loss_names = ("total", "nce", "cx", "gan", "discriminator", "identity", "pixel", "bone")

    def __init__(self, model, config, context, sample_generator, noise_generator, cx_features: VGG19Features) -> None:
        super().__init__(model, config, context, sample_generator, noise_generator)
        self.cx_features = cx_features
        self.tap = FeatureTap(stage1_feature_layers(model.stage1))
        heads = PatchProjection(_tap_channels(self.tap, model.stage1, config.crop_size, self.device), config.nce_projection)
        self.extras["heads"] = heads.to(self.device)
        self._adversarial_setup(config.stage1_weights)
        self.train_mode()  # trainable/frozen before the optimizers collect parameters
        self.generator = wrap_ddp(model.stage1, context)
        self.heads = wrap_ddp(self.extras["heads"], context)
        s = self.settings
        self.optimizers["generator"] = _adam([model.stage1, self.extras["heads"]], s.lr, s.betas, s.weight_decay)
        self.optimizers["discriminator"] = _adam([self.extras["discriminator"]], s.lr, s.betas, s.weight_decay)

    def train_mode(self) -> None:
        self.model.stage1.train()
        _set_requires_grad(self.model.stage1, True)
        _freeze(self.model.registration)
        _freeze(self.model.stage2)
        for module in self.extras.values():
            module.train()

    def train_step(self, batch):
        x, y, _ = self._batch(batch)
        zero = torch.zeros((), device=x.device)
        with self.tap.active():
            y_hat = self.generator(x, y, generator=self.noise_generator)
            keys = self.tap.take()
            loss_d, gan = self._adversarial_terms(y, y_hat)
            if self.weights.nce > 0:
                self.model.stage1(y_hat, y, generator=self.noise_generator)  # features of the output
                queries = self.tap.take()
        identity = self._identity(lambda: self.model.stage1(y, y, generator=self.noise_generator), y)
        nce = zero
        if self.weights.nce > 0:
            q, k = self.heads(queries, keys, num_patches=self.config.nce_patches, generator=self.sample_generator)
            nce = self.nce(q, k)
        cx = self.cx(self.cx_features(y_hat), self.cx_features(y), generator=self.sample_generator) if self.weights.cx > 0 else zero
        target = self._pixel_target(batch, y)
        pixel, bone = self._pixel(y_hat, target), self._bone(y_hat, target)
        return self._generator_step(loss_d, nce=nce, cx=cx, gan=gan, identity=identity, pixel=pixel, bone=bone)

    @torch.no_grad()
    def predict(self, x, y):
        return {"stage1": self.model.stage1(x, y)}


class RegistrationPhase(Phase):
    name = "registration"
    loss_names = ("total", "mse", "smooth")

    def __init__(self, model, config, context, sample_generator, noise_generator) -> None:
        super().__init__(model, config, context, sample_generator, noise_generator)
        self.train_mode()
        self.network = wrap_ddp(model.registration, context)
        s = self.settings
        self.optimizers["registration"] = _adam([model.registration], s.lr, s.betas, s.weight_decay)

    def train_mode(self) -> None:
        _freeze(self.model.stage1)
        self.model.registration.train()
        _set_requires_grad(self.model.registration, True)
        _freeze(self.model.stage2)

    def train_step(self, batch):
        x, y, _ = self._batch(batch)
        with torch.no_grad():
            y_hat = self.model.stage1(x, y)
        flow = self.network(fixed=y_hat, moving=y)
        total, parts = registration_loss(y_hat, y, flow, self.config.smooth_weight)
        self.optimizers["registration"].zero_grad(set_to_none=True)
        total.backward()
        self.optimizers["registration"].step()
        return _floats(total=total, **parts)

    @torch.no_grad()
    def predict(self, x, y):
        y_hat = self.model.stage1(x, y)
        flow = self.model.registration(fixed=y_hat, moving=y)
        return {"stage1": y_hat, "flow": flow, "warped": warp(y, flow)}


class Stage2Phase(Phase):
    name = "stage2"
    loss_names = ("total", "nce", "cx", "gan", "discriminator", "identity", "pixel", "bone")

    def __init__(self, model, config, context, sample_generator, noise_generator, cx_features: VGG19Features,
                 nce_features: VGG19Features | None) -> None:  # fmt: skip
        super().__init__(model, config, context, sample_generator, noise_generator)
        self.cx_features = cx_features
        self.nce_features = nce_features
        if nce_features is None:
            # No ImageNet VGG: PatchNCE on the frozen Stage 1 encoder (trained for exactly
            # this cross-modality structure match in Stage 1).
            self.tap = FeatureTap(stage1_feature_layers(model.stage1))
            channels = _tap_channels(self.tap, model.stage1, config.crop_size, self.device)
        else:
            self.tap = None
            with torch.no_grad():
                probe = torch.zeros(1, 1, config.crop_size, config.crop_size, device=self.device)
                channels = [f.shape[1] for f in nce_features(probe)]
        self.extras["heads"] = PatchProjection(channels, config.nce_projection).to(self.device)
        self._adversarial_setup(config.stage2_weights)
        self.train_mode()
        self.network = wrap_ddp(model.stage2, context)
        self.heads = wrap_ddp(self.extras["heads"], context)
        s = self.settings
        self.optimizers["generator"] = _adam([model.stage2, self.extras["heads"]], s.lr, s.betas, s.weight_decay)
        self.optimizers["discriminator"] = _adam([self.extras["discriminator"]], s.lr, s.betas, s.weight_decay)

    def train_mode(self) -> None:
        _freeze(self.model.stage1)
        _freeze(self.model.registration)
        self.model.stage2.train()
        _set_requires_grad(self.model.stage2, True)
        for module in self.extras.values():
            module.train()

    def _nce_features(self, image: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        if self.tap is None:
            return self.nce_features(image)
        with self.tap.active():
            self.model.stage1(image, y)
            return self.tap.take()

    def train_step(self, batch):
        x, y, y_shifted = self._batch(batch)
        c = self.config
        zero = torch.zeros((), device=x.device)
        # With the pixel term against the reference, the networks see the displaced
        # reference crop and the crop in place is the target: fed the target itself,
        # Stage 2 could copy it. A registered target is not the reference: feed y.
        shifted = c.stage2_pixel_weight > 0 and c.pixel_target == "reference"
        fed, target = (y_shifted, y) if shifted else (y, y_shifted)
        pixel_target = self._pixel_target(batch, target)
        with torch.no_grad():
            y_hat = self.model.stage1(x, fed)
            flow = self.model.registration(fixed=y_hat, moving=fed)
            keys = self._nce_features(x, fed) if self.weights.nce > 0 else None
        y_tilde = self.network(x, y_hat, fed, flow)
        loss_d, gan = self._adversarial_terms(fed, y_tilde)
        nce = zero
        if self.weights.nce > 0:
            q, k = self.heads(self._nce_features(y_tilde, fed), keys, num_patches=c.nce_patches, generator=self.sample_generator)
            nce = self.nce(q, k)
        cx = self.cx(self.cx_features(y_tilde), self.cx_features(target), generator=self.sample_generator) if self.weights.cx > 0 else zero
        identity = self._identity(lambda: self.model.stage2(fed, fed, fed, torch.zeros_like(flow)), fed)
        pixel, bone = self._pixel(y_tilde, pixel_target), self._bone(y_tilde, pixel_target)
        return self._generator_step(loss_d, nce=nce, cx=cx, gan=gan, identity=identity, pixel=pixel, bone=bone)

    @torch.no_grad()
    def predict(self, x, y):
        return self.model(x, y)


def build_phase(name: str, model: RbgModel, config: TrainingConfig, context: DistributedContext,
                sample_generator: torch.Generator, noise_generator: torch.Generator) -> Phase:  # fmt: skip
    """The :class:`Phase` called ``name``, with its feature networks on the context's device."""
    if name == "stage1":
        cx = VGG19Features(config.cx_layers, config.vgg_weights, config.vgg_seed).to(context.device)
        return Stage1Phase(model, config, context, sample_generator, noise_generator, cx)
    elif name == "registration":
        return RegistrationPhase(model, config, context, sample_generator, noise_generator)
    elif name == "stage2":
        cx = VGG19Features(config.cx_layers, config.vgg_weights, config.vgg_seed).to(context.device)
        nce = None if config.vgg_weights is None else VGG19Features(config.stage2_nce_vgg_layers, config.vgg_weights).to(context.device)
        return Stage2Phase(model, config, context, sample_generator, noise_generator, cx, nce)
    else:
        raise ValueError(f"phase must be stage1, registration or stage2, got {name!r}")


def feature_network_description(config: TrainingConfig) -> dict[str, str]:
    """Which feature networks the losses use (for the model card)."""
    cx = VGG19Features(config.cx_layers[:1], config.vgg_weights, config.vgg_seed).description
    return {
        "stage1_nce": "Stage 1 generator's own encoder features (CUT)",
        "contextual": f"{cx}, layers {', '.join(config.cx_layers)}",
        "stage2_nce": (
            f"{cx}, layers {', '.join(config.stage2_nce_vgg_layers)}" if config.vgg_weights is not None
            else "frozen Stage 1 encoder features (no ImageNet VGG-19 weights given)"
        ),
    }


def _tap_channels(tap: FeatureTap, network: nn.Module, size: int, device) -> list[int]:
    """Channels of the tapped layers, from one eval-mode probe forward on a zero crop
    (eval mode: no noise is drawn, so no random state moves)."""
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), tap.active():
            probe = torch.zeros(1, 1, size, size, device=device)
            network(probe, probe)
            return [f.shape[1] for f in tap.take()]
    finally:
        network.train(was_training)


def _floats(**values: torch.Tensor) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in values.items()}

