"""Privacy accounting: epsilon comes from an Opacus accountant and the mechanism, never typed in.

A mechanism is the subsampled Gaussian mechanism of DP-SGD (and of a noisy histogram,
with sample rate 1 and one step): ``(noise_multiplier, sample_rate, steps)``. A site's
spending is the composition of every such mechanism in its ledger, computed by the
same accountant that trained it (RDP or PRV). RDP uses a wider set of orders than
Opacus's default, because at large noise or many steps the default largest order can be
the optimal one (Opacus warns) and the bound is then looser than it needs to be.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass

ACCOUNTANTS = ("rdp", "prv")
RDP_ORDERS: list[float] = (
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + list(range(64, 256, 8)) + [256, 384, 512, 1024]
)
PRV_EPS_ERROR = 0.01


@dataclass(frozen=True)
class Mechanism:
    """One run of the subsampled Gaussian mechanism, as the accountant sees it."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")

    def to_dict(self) -> dict:
        return asdict(self)


def _accountant(name: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ValueError(f"unknown accountant {name!r} (use one of {', '.join(ACCOUNTANTS)})")


def accountant_epsilon(accountant, delta: float) -> float:
    """Epsilon of an Opacus accountant's history at ``delta``, with fedsynth's settings."""
    if not accountant.history:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest": orders are already wide
        if accountant.mechanism() == "rdp":
            return float(accountant.get_epsilon(delta=delta, alphas=RDP_ORDERS))
        # PRV of a mechanism without subsampling (q = 1: a noisy statistic) takes log(1 - q) = -inf
        # on purpose, where numpy warns
        warnings.filterwarnings("ignore", message="divide by zero encountered in log", category=RuntimeWarning)
        return float(accountant.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


def epsilon(mechanisms: Iterable[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the composition of ``mechanisms`` at ``delta``."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    acc = _accountant(accountant)
    acc.history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechanisms if m.steps > 0]
    return accountant_epsilon(acc, delta)


@functools.lru_cache(maxsize=256)
def noise_for_target(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp",
    reserved: tuple[Mechanism, ...] = (),
) -> float:
    """The smallest noise multiplier (to 0.01 in epsilon) that keeps ``steps`` steps within target;
    with ``reserved`` mechanisms (a noisy statistic the same request releases), the steps composed
    with them stay within target.

    Cached: every round of a federated run asks the same question again."""
    from opacus.accountants.utils import get_noise_multiplier

    if not target_epsilon > 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    if reserved:
        alone = noise_for_target(target_epsilon, delta, sample_rate, steps, accountant)
        return _noise_beside(target_epsilon, delta, sample_rate, steps, accountant, reserved, alone)
    kwargs = {"alphas": RDP_ORDERS} if accountant == "rdp" else {"eps_error": PRV_EPS_ERROR}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=0.01,
                **kwargs,
            )
        )


def _noise_beside(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str,
                  reserved: tuple[Mechanism, ...], alone: float) -> float:
    """Bisection on the noise multiplier of ``steps`` subsampled Gaussian steps composed with
    ``reserved``: the smallest (to 0.01 in epsilon, as Opacus's own search) within target. It is
    at least ``alone``, the noise the steps need by themselves."""
    if epsilon(reserved, delta, accountant) >= target_epsilon:
        raise ValueError(f"the reserved mechanisms alone spend epsilon {epsilon(reserved, delta, accountant):.3g}, "
                         f"not below the target {target_epsilon:g}")

    def spent(sigma: float) -> float:
        return epsilon([Mechanism(sigma, sample_rate, steps), *reserved], delta, accountant)

    low, high = alone, alone * 1.1
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon:g} beside the reserved mechanisms")
    # ``high`` always stays within target; stop at Opacus's tolerance, or after enough halvings
    # that a numerical accountant (PRV, error 0.01 itself) cannot keep it from ending
    for _ in range(60):
        if spent(high) >= target_epsilon - 0.01 or high - low <= 1e-9 * high:
            break
        mid = (low + high) / 2
        if spent(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def default_delta(n: int) -> float:
    """delta well below 1/n: min(1e-5, 1/(10 n))."""
    if n <= 0:
        raise ValueError("the dataset is empty")
    return min(1e-5, 1.0 / (10.0 * n))


def same_epsilon(a: float, b: float, rel: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)
