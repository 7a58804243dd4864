"""The diffusion sampler: which of physicsnemo's two EDM samplers, with which settings.

Two presets, both run through physicsnemo's own sampler functions:

``blog`` (the default, so the blog's figures and timings reproduce)
    physicsnemo's ``deterministic_sampler``, 8 Euler steps: what earth2studio's
    ``CorrDiffTaiwan`` uses (``number_of_steps=8``, ``solver="euler"``,
    earth2studio 0.19 ``models/dx/corrdiff.py``) and what modulus v0.5.0's
    ``examples/generative/corrdiff/conf/config_generate.yaml`` sets (line 31
    ``num_steps: 8``, line 37 ``sampling_method: deterministic``, line 81
    ``solver: euler``). sigma_max is the sampler's own ``edm`` default of 80 (physicsnemo
    2.2.2 ``diffusion/samplers/legacy_deterministic_sampler.py`` line 322, used when
    ``sigma_max=None`` as earth2studio passes it).
    8 network calls per sample.

``paper`` (the CorrDiff paper's evaluation)
    physicsnemo's ``stochastic_sampler``, the EDM paper's Algorithm 2 (second order, Heun
    correction on every step but the last). modulus v0.5.0
    ``examples/generative/corrdiff/README.md`` lines 100-103: "the second-order stochastic
    sampler provided by EDM ... 18 steps, starting from a maximum noise variance of
    sigma_max = 800 ... to a minimum ... of sigma_min = 0.002. We adopt the rest of
    hyperparameters from EDM". Those are physicsnemo 2.2.2's ``stochastic_sampler``
    defaults (``diffusion/samplers/legacy_stochastic_sampler.py`` lines 96-103:
    ``num_steps=18, sigma_min=0.002, sigma_max=800, rho=7, S_churn=0, S_min=0,
    S_max=inf, S_noise=1``), and physicsnemo's current Taiwan generation config picks that
    sampler with 18 steps (``examples/weather/corrdiff/conf/base/generation/base_all.yaml``
    line 18 ``sampler: stochastic``; ``.../generation/sampler/stochastic.yaml`` line 20,
    ``num_steps: 18``; physicsnemo commit 94b355108). 2 x 18 - 1 = 35 network calls per
    sample.

With ``S_churn = 0`` (both presets) the churn term of either sampler is
``sqrt(t_hat**2 - t_cur**2) * S_noise * randn_like(x)`` with ``t_hat == t_cur``: exactly
zero, so no noise is drawn for it (``speed.zero_churn_noise``; bitwise the same result,
tested). With ``S_churn > 0`` each sample draws its churn noise from its own generator,
the one that drew its initial latent, so sample *i* of time *t* gets the same noise
whatever the batch size, rank count or other times in the run (as EDM's
``StackedRandomGenerator`` does for its seeds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

SamplerKind = Literal["deterministic", "stochastic"]
SAMPLERS: tuple[SamplerKind, ...] = ("deterministic", "stochastic")
SOLVERS = ("euler", "heun")


@dataclass(frozen=True)
class SamplerSettings:
    """Every setting of the diffusion sampler, named as in physicsnemo's generate configs.

    ``solver`` applies to the deterministic sampler only; the stochastic one is always
    second order (``heun``).
    """

    sampler: SamplerKind
    steps: int
    solver: str
    sigma_min: float
    sigma_max: float
    rho: float
    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0

    @property
    def calls_per_sample(self) -> int:
        """Diffusion network calls per sample (Heun: two per step but the last)."""
        return self.steps if self.solver == "euler" else 2 * self.steps - 1

    @property
    def churns(self) -> bool:
        """Whether the sampler adds churn noise (``S_churn > 0``)."""
        return self.s_churn > 0

    def describe(self) -> str:
        """One line for logs and reports."""
        text = (
            f"{self.sampler} sampler, {self.steps} {self.solver} step(s) = "
            f"{self.calls_per_sample} diffusion call(s) per sample, sigma "
            f"{self.sigma_min:g}..{self.sigma_max:g}, rho {self.rho:g}"
        )
        if self.churns:
            text += (
                f", S_churn {self.s_churn:g} (S_min {self.s_min:g}, S_max {self.s_max:g}, "
                f"S_noise {self.s_noise:g})"
            )
        return text

    def to_json(self) -> dict[str, Any]:
        """JSON-safe values (infinity as the string "inf"), for store attributes."""
        return {
            key: ("inf" if isinstance(value, float) and math.isinf(value) else value)
            for key, value in asdict(self).items()
        }

    def keywords(self) -> dict[str, Any]:
        """Keyword arguments of physicsnemo's sampler functions (their own names)."""
        common: dict[str, Any] = {
            "num_steps": self.steps,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "rho": self.rho,
            "S_churn": self.s_churn,
            "S_min": self.s_min,
            "S_max": self.s_max,
            "S_noise": self.s_noise,
        }
        if self.sampler == "deterministic":
            common["solver"] = self.solver
        return common


#: The settings a user can override, one command-line option each (``--sigma-min`` etc.).
OPTION_FIELDS = (
    "steps", "solver", "sigma_min", "sigma_max", "rho", "s_churn", "s_min", "s_max", "s_noise",
)  # fmt: skip

PRESETS: dict[str, SamplerSettings] = {
    "blog": SamplerSettings("deterministic", 8, "euler", sigma_min=0.002, sigma_max=80.0, rho=7.0),
    "paper": SamplerSettings("stochastic", 18, "heun", sigma_min=0.002, sigma_max=800.0, rho=7.0),
}
#: The preset each sampler starts from when ``--sampler`` is given without ``--preset``.
PRESET_OF = {"deterministic": "blog", "stochastic": "paper"}


def resolve(
    preset: str | None,
    sampler: str | None,
    overrides: Mapping[str, Any],
    base: SamplerSettings | None = None,
) -> SamplerSettings:
    """Settings from a preset (or the preset of ``sampler``) with explicit options on top.

    Parameters
    ----------
    preset : str or None
        ``blog`` or ``paper``; None means the preset of ``sampler``, else ``blog``.
    sampler : str or None
        ``deterministic`` or ``stochastic``; must agree with ``preset`` when both are given.
    overrides : mapping
        Field name -> value for each option the user gave (None values are ignored).
    base : SamplerSettings, optional
        What to start from instead of a preset when none is named and ``sampler`` is
        None or ``base``'s: a model package's own settings (its ``metadata.json``).

    Raises
    ------
    ValueError
        With a one-line message for the user: a conflict or a value out of range.
    """
    if preset is not None and sampler is not None and PRESETS[preset].sampler != sampler:
        raise ValueError(
            f"--preset {preset} uses the {PRESETS[preset].sampler} sampler, not --sampler "
            f"{sampler}: drop one of the two"
        )
    name = preset or PRESET_OF[sampler or "deterministic"]
    given = {key: value for key, value in overrides.items() if value is not None}
    settings = PRESETS[name]
    if base is not None and preset is None and sampler in (None, base.sampler):
        settings = base
    if settings.sampler == "stochastic" and given.get("solver", "heun") != "heun":
        raise ValueError(
            f"--solver {given['solver']}: the stochastic sampler is always second order "
            "(heun); use --sampler deterministic for Euler steps"
        )
    settings = replace(settings, **given)
    check(settings)
    return settings


#: Noise levels a sampler may start and end at (the published 0.002 to 80 or 800). The
#: diffusion net was trained on noise levels drawn around 0.3 (EDM's log-normal, P_mean
#: -1.2, P_std 1.2): far outside this range it is asked what it never learned, and at the
#: extremes float32 gives out (sigma 1e-300 is 0, whose log is -inf: every value NaN).
SIGMA_LIMITS = (1e-4, 1e4)
#: Time-step exponents the schedule holds up at (published 7; below 1 the steps crowd at
#: the highest noise levels, and at 0.5 the stochastic sampler already returns NaN).
RHO_LIMITS = (1.0, 100.0)
#: EDM's cap on the churn of one step, gamma = S_churn / steps <= sqrt(2) - 1 (Karras et
#: al. 2022, Algorithm 2). physicsnemo's deterministic sampler applies it silently; its
#: stochastic sampler does not apply it at all, so a large S_churn multiplies the noise
#: level at every step (an infinite one gives NaN everywhere). We refuse what EDM caps.
MAX_CHURN_PER_STEP = math.sqrt(2) - 1
#: Churn noise inflation allowed: EDM's tuned values are 1.000 to 1.007, published 1.
MAX_S_NOISE = 2.0


def check(settings: SamplerSettings) -> None:
    """Refuse settings that cannot give a finite, physical ensemble, naming the rule.

    Every setting must be finite (``S_max`` may be infinite: "churn at every level"),
    and inside the limits above. Each computed batch is checked as well
    (``downscale``), so what these limits let through still cannot reach the store as
    a complete piece.
    """
    low, high = SIGMA_LIMITS
    values = {
        "--sigma-min": settings.sigma_min,
        "--sigma-max": settings.sigma_max,
        "--rho": settings.rho,
        "--s-churn": settings.s_churn,
        "--s-min": settings.s_min,
        "--s-noise": settings.s_noise,
    }
    for flag, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{flag} {value:g}: must be a finite number")
    churn_cap = MAX_CHURN_PER_STEP * settings.steps
    rules: Sequence[tuple[bool, str]] = (
        (settings.steps >= 2, f"--steps {settings.steps}: use 2 or more"),
        (
            0 < settings.sigma_min < settings.sigma_max,
            f"--sigma-min {settings.sigma_min:g} / --sigma-max {settings.sigma_max:g}: need "
            "0 < sigma_min < sigma_max < inf",
        ),
        (
            low <= settings.sigma_min and settings.sigma_max <= high,
            f"--sigma-min {settings.sigma_min:g} / --sigma-max {settings.sigma_max:g}: keep "
            f"both within {low:g} to {high:g} (published 0.002 to 80 or 800); beyond, the "
            "network is asked about noise levels it was never trained on",
        ),
        (
            RHO_LIMITS[0] <= settings.rho <= RHO_LIMITS[1],
            f"--rho {settings.rho:g}: use {RHO_LIMITS[0]:g} to {RHO_LIMITS[1]:g} (published: 7)",
        ),
        (settings.s_churn >= 0, f"--s-churn {settings.s_churn:g}: must be 0 or more"),
        (
            settings.s_churn <= churn_cap,
            f"--s-churn {settings.s_churn:g}: EDM caps the churn per step at sqrt(2) - 1, so "
            # Rounded down: the value printed must itself pass.
            f"at most {math.floor(churn_cap * 1000) / 1000:g} for {settings.steps} steps",
        ),
        (
            0 <= settings.s_noise <= MAX_S_NOISE,
            f"--s-noise {settings.s_noise:g}: use 0 to {MAX_S_NOISE:g} (published 1; EDM's "
            "tuned values are 1.000 to 1.007)",
        ),
        (
            0 <= settings.s_min <= settings.s_max,
            f"--s-min {settings.s_min:g} / --s-max {settings.s_max:g}: need 0 <= S_min <= S_max",
        ),
    )
    for ok, message in rules:
        if not ok:
            raise ValueError(message)


class SampleNoise:
    """One CPU generator per ensemble member: its initial latent, then its churn draws.

    Parameters
    ----------
    seeds : sequence of int
        One seed per sample in the batch (``downscale.sample_seed``).
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        import torch

        self._generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def latents(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Standard normal latents, one (shape) draw per sample, stacked on ``device``."""
        import torch

        draws = [torch.randn(shape, generator=g) for g in self._generators]
        return torch.stack(draws).to(device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """The sampler's ``randn_like``: sample ``i`` of ``x`` gets generator ``i``'s draw."""
        import torch

        if x.shape[0] != len(self._generators):
            raise ValueError(f"noise for {len(self._generators)} samples, batch of {x.shape[0]}")
        draws = [torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in self._generators]
        return torch.stack(draws).to(x.device)


def run_sampler(
    net: torch.nn.Module,
    latents: torch.Tensor,
    condition: torch.Tensor,
    settings: SamplerSettings,
    noise: SampleNoise,
    mean_hr: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw residuals with physicsnemo's own sampler function for ``settings``.

    ``mean_hr`` (the regression mean, batch 1) goes to the sampler as physicsnemo's
    conditioning on it; CorrDiff Taiwan's checkpoint was trained without it (None).
    """
    from corrdiff_tools.speed import zero_churn_noise

    extra = {} if mean_hr is None else {"mean_hr": mean_hr}
    randn_like = noise.randn_like if settings.churns else zero_churn_noise
    if settings.sampler == "deterministic":
        from physicsnemo.diffusion.samplers.legacy_deterministic_sampler import (
            deterministic_sampler,
        )

        return deterministic_sampler(
            net, latents, condition, randn_like=randn_like, **settings.keywords(), **extra
        )
    from physicsnemo.diffusion.samplers.legacy_stochastic_sampler import stochastic_sampler

    return stochastic_sampler(
        net, latents, condition, randn_like=randn_like, **settings.keywords(), **extra
    )


def draw_residuals(
    net: torch.nn.Module,
    condition: torch.Tensor,
    channels: int,
    seeds: Sequence[int],
    settings: SamplerSettings,
    mean_hr: torch.Tensor | None = None,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """Diffusion residuals for one batch of samples, normalised, (len(seeds), channels, H, W).

    Each sample gets its own seeded generator (:class:`SampleNoise`), drawn on the CPU so
    it is the same on every device and for every batch size; the latents lie on the
    conditioning's grid (``condition`` is batch 1, repeated for each sample), in
    ``memory_format`` when given. Shared by every model family's forward pass.
    """
    import torch

    noise = SampleNoise(seeds)
    latents = noise.latents((channels, *condition.shape[-2:]), condition.device)
    if memory_format is not None:
        latents = latents.to(memory_format=memory_format)
    with torch.inference_mode():
        return run_sampler(
            net,
            latents,
            condition.expand(len(seeds), -1, -1, -1),
            settings,
            noise,
            mean_hr=mean_hr,
        )


def store_attrs(settings: SamplerSettings) -> dict[str, Any]:
    """The sampler's settings as store attributes, under physicsnemo's config names."""
    values = settings.to_json()
    preset = next((name for name, known in PRESETS.items() if known == settings), "custom")
    return {
        "sampler": values["sampler"],
        "sampler_preset": preset,
        "steps": values["steps"],
        "solver": values["solver"],
        "network_calls_per_sample": settings.calls_per_sample,
        "sigma_min": values["sigma_min"],
        "sigma_max": values["sigma_max"],
        "rho": values["rho"],
        "S_churn": values["s_churn"],
        "S_min": values["s_min"],
        "S_max": values["s_max"],
        "S_noise": values["s_noise"],
    }
