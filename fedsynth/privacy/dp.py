"""DP-SGD wiring: plan a private training, check it against the site's budget, wrap it with Opacus.

The plan fixes the mechanism before any step: Poisson sample rate ``q = 1 / ceil(n / B)``
(the rate Opacus derives from a loader of batch size B), ``steps = epochs * ceil(n / B)``,
and the noise multiplier that keeps those steps within the requested epsilon at delta
for the chosen accountant. The budget check composes that mechanism with everything in
the site's ledger and refuses before training if the total would exceed the budget.
After training, epsilon is read from the Opacus accountant that counted the real steps.
"""

from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fedsynth.errors import FedsynthError
from fedsynth.privacy.accounting import Mechanism, accountant_epsilon, default_delta, epsilon, noise_for_target
from fedsynth.privacy.ledger import dp_mechanisms, non_private, spent_epsilon

# Opacus warns on every engine without a secure RNG: every ledger entry records
# secure_rng instead, and the audit report says it. The backward-hook warning fires on the
# first layer, whose input (an image) needs no gradient; per-sample gradients are unaffected.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect")


class BudgetExceeded(FedsynthError):
    """A request would spend more privacy than the site's budget allows."""


class PrivacyUnavailable(FedsynthError):
    """A requested privacy feature cannot be provided here (e.g. a secure RNG)."""


@dataclass(frozen=True)
class DPPlan:
    target_epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    batch_size: int
    epochs: int
    max_grad_norm: float
    accountant: str
    secure_rng: bool
    n: int
    grad_sample_mode: str = "auto"  # how Opacus computes per-sample gradients; not part of the mechanism

    def mechanism(self) -> Mechanism:
        return Mechanism(self.noise_multiplier, self.sample_rate, self.steps)

    @property
    def expected_batch_size(self) -> int:
        """Real examples per step on average under Poisson sampling (q * n)."""
        return max(1, int(round(self.sample_rate * self.n)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    epsilon: float
    delta: float


def opacus_steps_per_epoch(sample_rate: float) -> int:
    """Steps per epoch of Opacus's ``UniformWithReplacementSampler`` at this sample rate."""
    return int(1 / sample_rate)


def plan_training(privacy: Any, n: int, batch_size: int, epochs: int, calibrate_epochs: int | None = None,
                  reserved: tuple[Mechanism, ...] = ()) -> DPPlan:
    """A DP-SGD plan for ``n`` private examples (``privacy`` is the config's privacy section).

    ``calibrate_epochs``: the noise is calibrated so that this many epochs in all (every
    round of a federated run) stay within the target epsilon, while the plan itself covers
    ``epochs`` (one round). ``reserved``: mechanisms the same request also runs (a noisy
    class count), inside the target: the steps composed with them stay within it."""
    if n < 2:
        raise ValueError("DP training needs at least 2 examples")
    batch_size = min(batch_size, n)
    batches = math.ceil(n / batch_size)
    # Opacus samples each example with probability 1 / batches, but its sampler runs int(1 / that)
    # steps an epoch, which floating point can make one fewer (1 / (1 / 93) = 92.99...), and its
    # accountant then counts the rate 1 / steps. Plan (and record) what the accountant counts:
    # that rate is at least the real one, so the recorded epsilon bounds the real mechanism's.
    per_epoch = opacus_steps_per_epoch(1.0 / batches)
    q = 1.0 / per_epoch
    steps = epochs * per_epoch
    delta = privacy.delta if privacy.delta is not None else default_delta(n)
    if delta >= 1.0 / n:
        raise ValueError(f"privacy.delta={delta:g} is not below 1/n = {1.0 / n:.3g} for this site's {n} images")
    if privacy.secure_rng:
        try:
            import torchcsprng  # noqa: F401
        except ImportError:
            raise PrivacyUnavailable(
                "privacy.secure_rng=true needs the torchcsprng package, which is not installed"
            ) from None
    total_steps = (calibrate_epochs or epochs) * per_epoch
    sigma = noise_for_target(privacy.epsilon, delta, q, total_steps, privacy.accountant, tuple(reserved))
    return DPPlan(
        target_epsilon=float(privacy.epsilon),
        delta=float(delta),
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        batch_size=batch_size,
        epochs=epochs,
        max_grad_norm=float(privacy.max_grad_norm),
        accountant=privacy.accountant,
        secure_rng=bool(privacy.secure_rng),
        n=n,
        grad_sample_mode=getattr(privacy, "grad_sample_mode", "auto"),
    )


def plan_statistic(privacy: Any, n: int, sensitivity: float = 1.0) -> DPPlan:
    """The plan of one Gaussian mechanism on a sum over ``n`` private examples whose L2
    sensitivity is ``sensitivity`` (add or remove one example): sample rate 1, one step, and
    the noise multiplier (noise std / sensitivity) that meets the target epsilon at delta."""
    if n < 2:
        raise ValueError("a private statistic needs at least 2 examples")
    delta = privacy.delta if privacy.delta is not None else default_delta(n)
    if delta >= 1.0 / n:
        raise ValueError(f"privacy.delta={delta:g} is not below 1/n = {1.0 / n:.3g} for this site's {n} images")
    sigma = noise_for_target(privacy.epsilon, delta, 1.0, 1, privacy.accountant)
    return DPPlan(target_epsilon=float(privacy.epsilon), delta=float(delta), noise_multiplier=sigma, sample_rate=1.0,
                  steps=1, batch_size=n, epochs=1, max_grad_norm=float(sensitivity), accountant=privacy.accountant,
                  secure_rng=bool(privacy.secure_rng), n=n)


class GaussianStatistic:
    """The Gaussian mechanism on one bounded sum, as ``PrivateTraining`` is DP-SGD: ``noisy``
    adds the planned noise (OS entropy, never the run seed) once, ``result`` reports the
    mechanism and the epsilon the accountant computes for it."""

    def __init__(self, plan: DPPlan, name: str):
        if plan.sample_rate != 1.0 or plan.steps != 1:
            raise ValueError("a Gaussian statistic is released once, at sample rate 1")
        if plan.secure_rng:
            raise PrivacyUnavailable("privacy.secure_rng=true needs torchcsprng, which is not installed")
        self.plan, self.name, self.released = plan, name, False

    def noisy(self, total: torch.Tensor) -> torch.Tensor:
        if self.released:
            raise RuntimeError("a Gaussian statistic is released once per plan")
        self.released = True
        std = self.plan.noise_multiplier * self.plan.max_grad_norm
        noise = torch.randn(total.shape, generator=entropy_generator(), dtype=torch.float64) * std
        return (total.double().cpu() + noise).to(total.dtype)

    def result(self) -> dict[str, Any]:
        if not self.released:
            raise RuntimeError("the statistic was not released")
        mech = Mechanism(self.plan.noise_multiplier, 1.0, 1)
        return {
            "mechanism": {
                "name": self.name,
                "noise_multiplier": self.plan.noise_multiplier,
                "sample_rate": 1.0,
                "steps": 1,
                "max_grad_norm": self.plan.max_grad_norm,  # the sum's L2 sensitivity
                "delta": self.plan.delta,
                "accountant": self.plan.accountant,
                "secure_rng": False,
                "noise_source": NOISE_SOURCE,
            },
            "epsilon": epsilon([mech], self.plan.delta, self.plan.accountant),
            "target_epsilon": self.plan.target_epsilon,
        }


@dataclass(frozen=True)
class BudgetCheck:
    spent_before: float
    spent_after: float
    budget: Budget
    accountant: str

    @property
    def remaining(self) -> float:
        return self.budget.epsilon - self.spent_after


def check_budget(
    site: str,
    entries: list[dict[str, Any]],
    plan: DPPlan,
    budget: Budget,
    extra: tuple[Mechanism, ...] = (),
    on_training_data: bool = True,
) -> BudgetCheck:
    """Refuse (BudgetExceeded) before training if ``plan`` (and ``extra`` mechanisms the
    same request will run, e.g. a noisy statistic) would overspend the budget.
    ``on_training_data=False`` (a noisy evaluation of the held-out test split): a non-private
    training in the ledger does not void it, since it never saw those patients."""
    if plan.delta > budget.delta:
        raise BudgetExceeded(
            f"{site}: the request's delta {plan.delta:g} exceeds the site's budget delta {budget.delta:g}"
        )
    tainted = non_private(entries) if on_training_data else []
    if tainted:
        raise BudgetExceeded(
            f"{site}: ledger entry {tainted[0]['index']} trained without DP on this site's data; no DP guarantee "
            "can be given for those patients any more (a new dataset needs its own state directory and ledger)"
        )
    before = spent_epsilon(entries, budget.delta, plan.accountant)
    after = epsilon([*dp_mechanisms(entries), plan.mechanism(), *extra], budget.delta, plan.accountant)
    if after > budget.epsilon + 1e-9:
        raise BudgetExceeded(
            f"{site}: this training (epsilon {plan.target_epsilon:g} at delta {plan.delta:g}) composed with the "
            f"{before:.3g} already spent gives epsilon {after:.3g} at delta {budget.delta:g}, over the site's "
            f"budget of {budget.epsilon:g}"
        )
    return BudgetCheck(before, after, budget, plan.accountant)


def statistic_mechanism(target_epsilon: float, delta: float, accountant: str) -> Mechanism:
    """The Gaussian mechanism for one release of a sensitivity-1 statistic at (epsilon, delta)."""
    return Mechanism(noise_for_target(target_epsilon, delta, 1.0, 1, accountant), 1.0, 1)


def make_dp_compatible(model):
    """Replace what DP-SGD cannot train (BatchNorm mixes samples) and turn off in-place
    activations (they break Opacus's backward hooks); fail loudly on anything else."""
    import torch.nn as nn
    from opacus.validators import ModuleValidator

    model = ModuleValidator.fix(model)
    for m in model.modules():
        if isinstance(m, (nn.ReLU, nn.LeakyReLU)) and m.inplace:
            m.inplace = False
    ModuleValidator.validate(model, strict=True)
    return model


def entropy_generator() -> torch.Generator:
    """A torch generator seeded from the operating system's entropy. Everything the DP
    guarantee rests on (which examples a Poisson batch draws, the Gaussian noise) comes
    from such generators: seeding them from the run seed, which the server knows, would let
    the server replay the noise and subtract it."""
    return torch.Generator().manual_seed(secrets.randbits(63))


NOISE_SOURCE = "os-entropy"  # recorded in every DP ledger entry


class PrivateTraining:
    """Opacus around one module: ``wrap`` before the first step, ``result`` after the last.

    Poisson sampling and noise use fresh OS-entropy generators (never the run seed), so a
    DP run is reproducible from its config except for exactly those draws."""

    def __init__(self, plan: DPPlan):
        from opacus import PrivacyEngine

        self.plan = plan
        self.engine = PrivacyEngine(accountant=plan.accountant, secure_mode=plan.secure_rng)
        self.criterion = None  # the loss to call after wrap (Opacus's wrapper under ghost clipping)
        self.grad_sample_mode: str | None = None  # the engine wrap chose ("auto" resolved)

    def wrap(self, module, optimizer, loader, criterion=None):
        """Opacus's ``make_private`` on ``module``, ``optimizer`` and ``loader``. ``criterion`` is the
        training's loss as a per-example criterion (torch's ``reduction`` attribute): ghost clipping
        needs it and wraps it; afterwards ``self.criterion`` is the loss to call (``criterion``
        itself in the other modes). ``auto`` is ghost clipping when there is a criterion (the same
        clipped step as hooks, faster: benchmarks/dp_step_cost.py), hooks otherwise."""
        mode = self.plan.grad_sample_mode
        if mode == "auto":
            mode = "ghost" if criterion is not None else "hooks"
        self.grad_sample_mode = mode
        ghost = mode == "ghost"
        if ghost and criterion is None:
            raise ValueError("privacy.grad_sample_mode: ghost clipping needs the training loss as a per-example "
                             "criterion, which this model's training does not provide; use hooks or functorch")
        loader.generator = entropy_generator()  # Opacus's Poisson sampler draws with the loader's generator
        wrapped = self.engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self.plan.noise_multiplier,
            max_grad_norm=self.plan.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=mode,
            noise_generator=None if self.plan.secure_rng else entropy_generator(),
            **({"criterion": criterion} if ghost else {}),
        )
        if ghost:
            module, optimizer, self.criterion, loader = wrapped
        else:
            (module, optimizer, loader), self.criterion = wrapped, criterion
        steps = len(loader)  # Opacus's accountant counts the rate 1 / steps (see plan_training)
        q = 1.0 / steps
        if not math.isclose(q, self.plan.sample_rate, rel_tol=1e-9) or steps * self.plan.epochs != self.plan.steps:
            raise RuntimeError(f"Opacus accounts rate {q} for {steps} steps an epoch; the plan is rate "
                               f"{self.plan.sample_rate}, {self.plan.steps} steps in {self.plan.epochs} epoch(s)")
        return module, optimizer, loader

    def result(self) -> dict[str, Any]:
        """The mechanism as the accountant counted it, and its epsilon."""
        history = list(self.engine.accountant.history)
        if len(history) != 1:
            raise RuntimeError(f"expected one mechanism in the accountant's history, got {history}")
        sigma, q, steps = history[0]
        eps = accountant_epsilon(self.engine.accountant, self.plan.delta)
        return {
            "mechanism": {
                "name": "subsampled-gaussian (DP-SGD, Poisson sampling)",
                "noise_multiplier": float(sigma),
                "sample_rate": float(q),
                "steps": int(steps),
                "max_grad_norm": self.plan.max_grad_norm,
                "delta": self.plan.delta,
                "accountant": self.plan.accountant,
                "secure_rng": self.plan.secure_rng,
                "noise_source": "torchcsprng" if self.plan.secure_rng else NOISE_SOURCE,
            },
            "epsilon": eps,
            "target_epsilon": self.plan.target_epsilon,
        }
