"""The run configuration: one typed tree, loaded from YAML, with every default here.

A run is reproducible from its resolved config (``config.yaml`` in the run directory).
Unknown keys and bad values are rejected with a message that names the field, so a
typo in a YAML file never silently falls back to a default.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from fedsynth.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]

# Upper bounds on numbers: far above every shipped config, test and benchmark, and below where a
# value stops meaning anything or would exhaust memory or time (an epsilon of 1e308 promises no
# privacy at all; 10^9 epochs never end). Floats must also be finite (allow_inf_nan=False below).
MAX_EPSILON = 1000.0
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week
MAX_SEED = 2**63 - 1  # torch's seeds are 64-bit
MAX_EPOCHS = 100_000
MAX_STEPS = 1_000_000
MAX_BATCH = 65_536
MAX_WIDTH = 4096  # channels, latent sizes, ranks
MAX_LR = 10.0
MAX_IMAGES = 1_000_000  # thresholds counted in images
MAX_GENERATED = 100_000  # images generated at once (phantoms, a release per class): 100k x 256^2 floats = 26 GB
MAX_CONFIG_BYTES = 2**20  # a run or site config is a few KB; a bigger file is not one


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


class RunSection(_Section):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name; prefix of the run id.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed for every random choice in the run.")
    output_dir: str = Field("runs", description="Run directories are created under this folder.")
    mode: Literal["substitution", "federated", "fedavg-classifier", "centralized-real"] = Field(
        "substitution",
        description="substitution: each site trains a generator and releases synthetic images once; "
        "federated: FedAvg over generator weights for federation.rounds rounds, then the server samples; "
        "fedavg-classifier: classic FL of the classifier on real images (baseline); "
        "centralized-real: the classifier on pooled real images (simulation only; the upper bound).",
    )
    device: Device = Field("auto", description="Torch device for training; auto picks CUDA when present.")


BINARY_LABELS = ("normal", "pneumonia")
MAX_CLASSES = 16


def check_label_set(names: Any) -> tuple[str, ...]:
    """A label set as a tuple of distinct lower-case names, 2 to 16 of them, the first the
    negative class (``fedsynth.data.labels`` says how images get their class)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"a label set is a list of class names; got {names!r}")
    out = tuple(str(n).strip().lower() for n in names)
    if not 2 <= len(out) <= MAX_CLASSES:
        raise ValueError(f"a label set needs 2 to {MAX_CLASSES} class names; got {len(out)}")
    if any(not n or len(n) > 40 or not n.replace("-", "").replace("_", "").isalnum() for n in out):
        raise ValueError(f"class names must be short words (letters, digits, - or _); got {list(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"class names must be distinct; got {list(out)}")
    return out


class PhantomSection(_Section):
    n_images: int = Field(
        900, ge=20, le=MAX_GENERATED, description="Phantom images generated for the whole federation."
    )
    prevalence: float = Field(0.5, gt=0, lt=1, description="Fraction of phantoms with pneumonia.")
    images_per_patient: int = Field(2, ge=1, le=10, description="Upper bound of images per phantom patient.")
    markers: float = Field(
        0.0, ge=0, le=1, description="Share of phantoms with one burned-in marker (a letter, text or an ECG lead)."
    )
    virus: float = Field(
        0.0, ge=0, le=1, description="Share of pneumonia phantoms drawn as viral (bilateral perihilar haze) rather "
        "than bacterial (patchy consolidation); every phantom carries its subtype, for data.label_set.",
    )


class MarkersSection(_Section):
    """Burned-in laterality letters, text and ECG leads (``fedsynth.data.markers``): what a
    site does with them before a generator sees its images, and what it checks in a release.
    Detection is classical image processing and costs seconds per thousand images on a CPU,
    so both are off unless asked for."""

    training: Literal["keep", "inpaint", "drop"] = Field(
        "keep", description="The site's real training images with a marker: keep them, paint the marker out "
        "(harmonic inpainting), or leave the image out of generator training.",
    )
    release: Literal["off", "report", "drop"] = Field(
        "off", description="Synthetic images about to be released: 'report' the share with a marker (on up to "
        "check_images of them), or 'drop' every flagged image from the release (all are checked).",
    )
    check_images: int = Field(500, ge=10, le=MAX_GENERATED, description="Released images 'report' checks "
                              "(a random subset; the share is reported with its Wilson 95% interval).")
    grid: bool = Field(True, description="Write a before/after grid of flagged training images into the site's "
                       "own output folder (real pixels: it never leaves the site).")


class DataSection(_Section):
    source: str = Field(
        "phantom",
        description="'phantom', or a path to an npz bundle, a folder of PNG/JPEG/DICOM, or a folder of DICOMs.",
    )
    resolution: int = Field(32, description="Images are centre-cropped and resized to resolution x resolution.")
    phantom: PhantomSection = Field(default_factory=PhantomSection)
    test_fraction: float = Field(
        0.25, gt=0, lt=1, description="Share of each site's patients kept as its local real test split "
        "when the source has no official split.",
    )
    markers: MarkersSection = Field(default_factory=MarkersSection)
    label_set: tuple[str, ...] = Field(
        ("normal", "pneumonia"), description="The classes every generator conditions on and every release is "
        "labelled with; the first is the negative (normal) class. The default is binary, from the images' labels; "
        "any other set (e.g. [normal, bacteria, virus]) is read from each image's 'subtype' column.",
    )

    @field_validator("label_set", mode="before")
    @classmethod
    def _label_set(cls, v: Any) -> tuple[str, ...]:
        return check_label_set(v)

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v not in (16, 32, 64, 128, 256):
            raise ValueError("must be one of 16, 32, 64, 128, 256")
        return v


class ClientDPSection(_Section):
    """Client-level DP on the aggregate: the server clips every site's update and adds
    Gaussian noise to their average (Flower's server-side fixed-clipping wrapper and its
    RDP accountant)."""

    noise_multiplier: float = Field(..., gt=0, le=1e3, description="Noise std / clipping norm on the sum of updates.")
    clipping_norm: float = Field(..., gt=0, le=1e6, description="Bound on each site's update (L2).")
    delta: float = Field(1e-3, gt=0, lt=1, description="Delta for the client-level epsilon (sites, not images).")
    max_epsilon: float | None = Field(None, gt=0, le=MAX_EPSILON, description="Stop before a round would exceed this.")


class SecureAggregationSection(_Section):
    """SecAgg+ (Bell et al. 2020, Flower's ``SecAggPlusWorkflow`` and ``secaggplus_mod``):
    each site masks its update so that the server learns only the sites' average, never
    one site's weights. Updates are sent as differences from the global weights, clipped
    to ``clipping_range`` and quantized to ``quantization_range`` levels; each site counts
    once in the average."""

    num_shares: int | float = Field(
        1.0, gt=0, le=1000, description="Shares each site's secret is split into: an int > 2, or a fraction of the "
        "sites."
    )
    reconstruction_threshold: int | float = Field(
        0.67, gt=0, le=1000, description="Shares needed to unmask a site that dropped out: an int, or a fraction of "
        "num_shares."
    )
    clipping_range: float = Field(
        8.0, gt=0, le=1e6, description="Bound on every value of an update (difference from the global weights); a site "
        "whose update exceeds it refuses the round rather than send a clipped one.",
    )
    quantization_range: int = Field(2**22, gt=1, le=2**31 - 1, description="Levels each value is quantized to.")


class FederationSection(_Section):
    num_sites: int = Field(3, ge=1, le=64, description="Simulated sites the source is split into.")
    partition: Literal["iid", "dirichlet"] = Field(
        "iid", description="iid: patients spread at random; dirichlet: label skew by Dirichlet(alpha)."
    )
    dirichlet_alpha: float = Field(0.5, gt=0, le=1e4, description="Concentration of the label-skew partition.")
    min_site_images: int = Field(
        10, ge=2, le=MAX_IMAGES, description="Every simulated site gets at least this many images."
    )
    rounds: int = Field(
        5, ge=1, le=10_000, description="Rounds of federated averaging (modes federated, fedavg-classifier)."
    )
    local_epochs: int = Field(2, ge=1, le=MAX_EPOCHS, description="Epochs each site trains per round.")
    client_dp: ClientDPSection | None = Field(None, description="Client-level DP on the averaged update.")
    secure_aggregation: SecureAggregationSection | None = Field(
        None, description="SecAgg+ on the federated modes: the server sees only the sites' average update "
        "(true for the defaults).",
    )

    site_keys: dict[str, str] = Field(
        default_factory=dict, description="Server's registry: site name -> Ed25519 public key file. Empty in "
        "a simulation: each simulated site gets a key pair in sites.state_dir.",
    )
    min_sites: int = Field(
        1, ge=1, le=64, description="The run stops if fewer sites than this return a usable release."
    )
    site_timeout_s: float = Field(
        3600.0, gt=0, le=MAX_TIMEOUT_S, description="A site that has not replied after this long is dropped."
    )
    connect_timeout_s: float = Field(
        120.0, ge=0, le=MAX_TIMEOUT_S, description="How long the server waits for num_sites SuperNodes to connect "
        "before going on."
    )
    cpus_per_site: Annotated[float, Field(gt=0, le=1024)] | Literal["auto"] = Field(
        "auto", description="CPU cores reserved for each simulated site; auto: the machine's cores shared out "
        "among the sites, so that every site runs at once (each with as many torch threads as whole cores it "
        "gets, at least one)."
    )
    gpus_per_site: float = Field(0.0, ge=0, le=64, description="GPU share reserved for each simulated site.")

    @field_validator("secure_aggregation", mode="before")
    @classmethod
    def _secure_aggregation_flag(cls, v: Any) -> Any:
        # `secure_aggregation: true` means SecAgg+ with its defaults; false means off
        return {} if v is True else None if v is False else v

    def site_cpus(self, machine_cpus: int | None = None) -> float:
        """``cpus_per_site`` resolved: a number as given; auto shares ``machine_cpus`` (this machine's
        cores by default) among ``num_sites``. On 2 cores and 3 sites that is 2/3 of a core each: all
        three train at once, each on one thread, where whole cores would run two and leave one waiting."""
        if self.cpus_per_site != "auto":
            return float(self.cpus_per_site)
        cpus = machine_cpus if machine_cpus is not None else (os.cpu_count() or 1)
        # rounded down to Ray's resource precision (1e-4), or 3 x 0.6667 would ask for more than 2 cores
        return math.floor(max(cpus, 1) / self.num_sites * 1e4) / 1e4

    def site_threads(self, machine_cpus: int | None = None) -> int:
        """Torch threads for one simulated site: the whole cores it is given, at least one."""
        return max(1, int(self.site_cpus(machine_cpus)))


class _WarmStartable(_Section):
    init: str = Field(
        "", description="A warm start: a generator checkpoint trained on PUBLIC data only (`fedsynth generator "
        "pretrain`: phantoms, or a public CXR set that cannot overlap any site's patients). The site records its "
        "SHA-256 and its stated public source in the ledger; empty: random initialisation.",
    )


class GANSection(_WarmStartable):
    family: Literal["gan"] = "gan"
    latent_dim: int = Field(64, ge=2, le=MAX_WIDTH, description="Size of the noise vector.")
    base_channels: int = Field(32, ge=4, le=MAX_WIDTH, description="Width of the narrowest convolution (doubles per "
                               "level).")
    epochs: int = Field(40, ge=1, le=MAX_EPOCHS, description="Passes over the site's training images.")
    discriminator_channels: int | None = Field(
        None, ge=4, le=MAX_WIDTH, description="Width of the discriminator's first convolution (doubles per level); "
        "empty: base_channels. Under DP a narrow discriminator has fewer weights for the same noise per weight, so "
        "each step's noise vector is shorter against its clipped gradients.")
    batch_size: int = Field(16, ge=2, le=MAX_BATCH, description="Real images per discriminator step (the expected "
                            "size under DP).")
    lr_generator: float = Field(2e-4, gt=0, le=MAX_LR)
    lr_discriminator: float = Field(2e-4, gt=0, le=MAX_LR)
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1 for both networks.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Decay of the generator EMA used for sampling (0: off).")
    loss: Literal["bce", "hinge"] = Field("bce", description="Adversarial loss: non-saturating BCE or hinge.")
    diff_augment: bool = Field(
        True, description="Differentiable augmentation of the discriminator's inputs (helps small sites)."
    )


class DDPMSection(_WarmStartable):
    """Class-conditional diffusion on diffusers' UNet2DModel (DDPM training, DDIM sampling)."""

    family: Literal["ddpm"] = "ddpm"
    block_out_channels: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        [32, 64, 64], min_length=2, max_length=8, description="UNet widths, one per level.")
    layers_per_block: int = Field(1, ge=1, le=16)
    attention: bool = Field(False, description="Self-attention blocks at the coarsest level.")
    attention_head_dim: int = Field(8, ge=1, le=MAX_WIDTH)
    norm_num_groups: int = Field(8, ge=1, le=MAX_WIDTH)
    num_train_timesteps: int = Field(1000, ge=10, le=100_000)
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = Field("squaredcos_cap_v2",
                                                                   description="squaredcos_cap_v2 is the cosine one.")
    sampling_steps: int = Field(25, ge=1, le=10_000, description="DDIM steps when sampling.")
    guidance_scale: float = Field(2.0, ge=0, le=100, description="Classifier-free guidance weight (1: none).")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="Share of training examples with the null class.")
    epochs: int = Field(30, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)
    sample_batch_size: int | None = Field(
        None, ge=1, le=MAX_BATCH, description="Images per sampling batch. None: 256 on a GPU, 32 on a CPU, where "
        "bigger batches "
        "run slower per image (benchmarks/ddpm_sampling.py).")
    lr: float = Field(2e-4, gt=0, le=MAX_LR)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    augmentation_multiplicity: int = Field(
        4, ge=1, le=1024, description="Under DP: noise levels per example per step, averaged before clipping."
    )

    @model_validator(mode="after")
    def _groups_divide(self) -> DDPMSection:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}")
        return self


class SDLoRASection(_Section):
    """LoRA fine-tuning (peft) of a Stable Diffusion checkpoint the site has on disk."""

    family: Literal["sd-lora"] = "sd-lora"
    checkpoint: str = Field(..., description="Folder of a diffusers Stable Diffusion pipeline (model_index.json, "
                            "unet/, vae/, text_encoder/, tokenizer/, scheduler/).")
    rank: int = Field(8, ge=1, le=MAX_WIDTH, description="LoRA rank.")
    alpha: float = Field(8.0, gt=0, le=1e4, description="LoRA scaling alpha.")
    target_modules: list[str] = Field(["to_q", "to_k", "to_v", "to_out.0"])
    prompt_normal: str = "chest x-ray, no finding"
    prompt_pneumonia: str = "chest x-ray, pneumonia"
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(8, ge=1, le=MAX_BATCH)
    lr: float = Field(1e-4, gt=0, le=MAX_LR)
    sampling_steps: int = Field(30, ge=1, le=10_000)
    guidance_scale: float = Field(5.0, ge=0, le=100)
    sample_batch_size: int = Field(16, ge=1, le=MAX_BATCH)


class MeanEmbeddingSection(_WarmStartable):
    """DP mean-embedding matching (DP-MERF, Harder et al. 2021): the site's only contact with its
    images is one Gaussian mechanism, the class-wise sums of bounded random Fourier features
    (sensitivity 1, so the noise is small and known); a generator is then trained, as
    post-processing, to match the noisy class means. In ``run.mode: federated`` the sites send
    only that statistic, once, and the server fits one generator to the pooled sums."""

    family: Literal["dp-merf"] = "dp-merf"
    n_frequencies: int = Field(2000, ge=8, le=20000, description="Random frequencies; the features are their "
                               "cosines and sines (2x this many), scaled to unit norm.")
    bandwidth_scale: float = Field(1.0, gt=0, le=100, description="Kernel bandwidth as a multiple of the median "
                                   "pairwise distance of public phantoms at the run's resolution.")
    features: Literal["image", "image+patches"] = Field(
        "image", description="What the random Fourier features see: the whole image (one Gaussian kernel on "
        "pixels), or the whole image and, beside it, its local patches (a kernel on patches of a quarter of the "
        "image's side, averaged within each quadrant), each block at norm a/sqrt(2), half the squared norm.")
    patch_frequencies: int = Field(500, ge=8, le=20000, description="Random frequencies of the patch kernel "
                                   "(with features: image+patches).")
    count_weight: float = Field(0.2, gt=0, lt=1, description="Weight of the constant feature whose noisy sum "
                                "estimates each class's size (the features are scaled so the total norm stays 1).")
    feature_seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the random frequencies (public: part of the "
                              "mechanism's description, recorded in the ledger).")
    latent_dim: int = Field(64, ge=2, le=MAX_WIDTH, description="Size of the generator's noise vector.")
    base_channels: int = Field(32, ge=4, le=MAX_WIDTH, description="Width of the generator's narrowest convolution.")
    steps: int = Field(
        1500, ge=1, le=MAX_STEPS, description="Generator optimisation steps (post-processing: no privacy cost)."
    )
    batch_size: int = Field(128, ge=2, le=MAX_BATCH, description="Generated images per class per step.")
    lr: float = Field(5e-4, gt=0, le=MAX_LR)
    beta1: float = Field(0.5, ge=0, lt=1)


PRIVATE_DEFAULT_FAMILY = "dp-merf"  # chosen on the tuning split of benchmarks/private_utility.py (README, Privacy)

GENERATOR_SECTIONS: tuple[type[_Section], ...] = (GANSection, DDPMSection, SDLoRASection, MeanEmbeddingSection)
"""One config section per generator family; each names its family in its ``family`` literal,
the one place a family's name is written (the generator classes read it from here)."""


def family_name(section: type[_Section]) -> str:
    return section.model_fields["family"].default


def _family(value: Any) -> str:
    """The generator family of a config section; a section without one is a GAN (the default)."""
    if isinstance(value, dict):
        return str(value.get("family", "gan"))
    return str(getattr(value, "family", "gan"))


GeneratorConfig = Annotated[
    Union[tuple(Annotated[s, Tag(family_name(s))] for s in GENERATOR_SECTIONS)],  # type: ignore[valid-type]
    Discriminator(_family),
]


class PrivacySection(_Section):
    """Differential privacy for every module that sees real images (DP-SGD via Opacus)."""

    epsilon: float = Field(..., gt=0, le=MAX_EPSILON, description="Target epsilon of one site's training: its "
    "generator "
                           "(substitution), or all of its rounds together (federated modes).")
    delta: float | None = Field(
        None, gt=0, lt=1, description="Target delta; default min(1e-5, 1/(10 n)) for a site of n images."
    )
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="Per-sample gradient clipping bound.")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Accountant for calibration and reporting.")
    grad_sample_mode: Literal["auto", "hooks", "functorch", "ghost"] = Field(
        "auto", description="How Opacus computes per-sample gradients (the mechanism is the same either way; "
        "benchmarks/dp_step_cost.py measures their speed). ghost: ghost clipping, per-sample gradient norms "
        "without per-sample gradients, for the GAN's discriminator only (its loss is a per-example criterion); "
        "auto: ghost where the loss allows it (the GAN), hooks elsewhere.")
    secure_rng: bool = Field(False, description="Cryptographically secure noise (needs torchcsprng).")


class BudgetSection(_Section):
    epsilon: float = Field(
        30.0, gt=0, le=MAX_EPSILON, description="A site's total epsilon over everything in its ledger."
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="The delta at which the budget is composed.")


class SitePolicy(_Section):
    """What a site insists on, whatever the server asks (a deployed site sets it in site.yaml)."""

    require_dp: bool = Field(False, description="Refuse any training without differential privacy.")
    max_epsilon: float | None = Field(None, gt=0, description="Refuse a request that asks for more epsilon.")
    require_gate: bool = Field(False, description="Refuse to release without the release gate.")
    min_gate_quantile: float = Field(0.0, ge=0, lt=0.5, description="Refuse a gate looser than this quantile.")
    allow_alignment: bool = Field(True, description="Allow releasing an intensity histogram for alignment.")
    max_score_bins: int = Field(2000, ge=2, description="At most this many score-histogram bins leave the site.")
    min_bin_count: int = Field(
        5, ge=1, description="Score-histogram bins are merged until each holds at least this many test images, "
        "so no bin pins down one image's score.",
    )
    allow_alignment_without_dp: bool = Field(
        True, description="Release the (exact) intensity histogram for alignment in a run without DP too "
        "(a deployed site's default: false).")
    max_evaluations_per_run: int = Field(
        1, ge=0, le=100, description="Evaluations of a server's classifier this site answers per run (each one is a "
        "ledger entry); 0 refuses every evaluation.")
    evaluation_epsilon: float | None = Field(
        None, gt=0, le=1000, description="Answer evaluations only with Gaussian noise on the score histograms and "
        "confusion counts at this epsilon (composed into the site's budget); no fidelity or utility figures then.")
    evaluate_unsigned_synthetic: bool = Field(
        True, description="Measure fidelity and utility on a synthetic sample whose images cannot be traced to a "
        "release signed by a consortium member for the run (e.g. sampled by the server in federated mode); a "
        "deployed site's default: false.")


DEPLOYMENT_POLICY = {"require_dp": True, "require_gate": True, "max_epsilon": 10.0,
                     "allow_alignment_without_dp": False, "evaluate_unsigned_synthetic": False}
"""What a deployed site insists on when its site.yaml says nothing: a hospital's data is never
released without DP or the gate, nor at more than epsilon 10, no exact statistic leaves it, and
fidelity is measured only on signed releases, unless its own config relaxes it. (A simulation's
``sites.policy`` keeps the permissive defaults above: one researcher plays every role.)"""


class SitesSection(_Section):
    """What simulated sites decide for themselves (in a deployment: each site's site.yaml)."""

    state_dir: str = Field(
        "", description="Where simulated sites keep their keys and ledgers; empty = inside the run directory. "
        "Point several runs at one folder to compose their budgets.",
    )
    budget: BudgetSection = Field(default_factory=BudgetSection)
    budgets: dict[str, BudgetSection] = Field(
        default_factory=dict, description="Per-site budget overrides, by site name (site-0, site-1, ...)."
    )
    generators: dict[str, GeneratorConfig] = Field(
        default_factory=dict, description="Per-site generator choices (a site picks its family), by site name."
    )
    policy: SitePolicy = Field(default_factory=SitePolicy)

    def budget_for(self, site: str) -> BudgetSection:
        return self.budgets.get(site, self.budget)


class GateSection(_Section):
    enabled: bool = Field(True, description="Drop synthetic images that sit too close to a training image.")
    quantile: float = Field(
        0.01, ge=0, lt=0.5, description="Threshold: this quantile of real-to-real nearest-neighbour distances."
    )
    max_rounds: int = Field(5, ge=1, le=1000, description="Rounds of re-sampling to replace dropped images.")
    membership_audit: bool = Field(True, description="Measure a membership-inference attack's AUC on the release.")


class AlignmentSection(_Section):
    """Post-hoc domain alignment: match synthetic intensities to the sites' real ones."""

    enabled: bool = Field(False, description="Sites release an intensity histogram; the server matches to it.")
    by_class: bool = Field(
        True, description="One histogram per class, each class matched to its own reference (the pooled "
        "synthetic images are class-balanced, the sites' real ones are not); false: one for all images.",
    )
    bins: int = Field(64, ge=8, le=1024)
    epsilon: float = Field(
        0.5, gt=0, le=MAX_EPSILON, description="Under DP: the histogram's own epsilon (Gaussian mechanism), on top "
        "of training."
    )


class ReleaseSection(_Section):
    n_per_class: int = Field(
        400, ge=1, le=MAX_GENERATED, description="Synthetic images each site releases per class (normal, pneumonia)."
    )
    min_class_images: int = Field(
        10, ge=1, le=MAX_IMAGES, description="A site releases a class only if it trained on at least this many "
        "images of it."
    )
    count_noise: float = Field(
        20.0, ge=1.0, le=1e6, description="Under DP with a DP-SGD generator (gan, ddpm): the standard deviation, "
        "in images, of the Gaussian noise on the class counts that release.min_class_images is decided on (one "
        "image moves one count by 1). Accounted in the ledger, inside privacy.epsilon: the training's noise is "
        "calibrated for both. dp-merf decides on the counts its own release carries."
    )


class ClassifierSection(_Section):
    arch: Literal["auto", "small-cnn", "resnet18"] = Field(
        "auto", description="auto: small-cnn up to 32 px, resnet18 above."
    )
    width: int = Field(32, ge=4, le=512, description="small-cnn: channels of its first block (the next two "
                       "double it); its arithmetic grows with the square. Ignored by resnet18.")
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)
    lr: float = Field(1e-3, gt=0, le=MAX_LR)
    weight_decay: float = Field(1e-4, ge=0, le=MAX_LR)
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of the pooled synthetic data held out for model selection."
    )
    augment: bool = Field(True, description="Random affine, contrast and noise augmentation while training.")
    intensity: Literal["none", "equalize", "clahe"] = Field(
        "none", description="Per-image intensity normalization before training and scoring (histogram "
        "equalization or CLAHE); saved with the classifier, so prediction applies the same.",
    )
    threshold_rule: Literal["youden", "sensitivity-0.9"] = Field(
        "youden", description="How the decision threshold is chosen on the synthetic validation split."
    )
    task: Literal["binary", "subtype"] = Field(
        "binary", description="binary: normal vs pneumonia. subtype: one class per name of data.label_set "
        "(softmax), with per-class metrics beside the binary ones (pneumonia = not the first class).",
    )


class CalibrationSection(_Section):
    """Calibrating the server's classifier on real images the sites keep apart for it: each site
    holds out ``fraction`` of its training patients (never trained on, never its test split) and
    returns class-wise score histograms of them (noisy and in its budget under DP); the server
    fits a temperature and the decision threshold on the pooled histograms."""

    enabled: bool = Field(False, description="Calibrate the classifier before the sites evaluate it.")
    fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of each site's training patients held out.")
    epsilon: float = Field(0.5, gt=0, le=1000, description="Under DP: the calibration histograms' own epsilon "
                           "(Gaussian mechanism), on top of training.")
    refit_threshold: bool = Field(True, description="Choose the decision threshold again on the calibrated pooled "
                                  "histograms (classifier.threshold_rule).")


class EvaluationSection(_Section):
    bootstrap: int = Field(
        1000, ge=0, le=100_000, description="Stratified bootstrap resamples for confidence intervals (0: off)."
    )
    ci_level: float = Field(0.95, gt=0, lt=1)
    histogram_bins: int = Field(
        2000, ge=10, le=100_000, description="Score-histogram bins a site returns so the server can pool metrics "
        "without per-image scores.",
    )
    grid_images: int = Field(8, ge=1, le=64, description="Images per row in the real-vs-synthetic grids.")
    fidelity: bool = Field(True, description="Sites measure the synthetic images' fidelity against their real ones.")
    fidelity_samples: int = Field(
        300, ge=10, le=MAX_GENERATED, description="Pooled synthetic images sent to each site for fidelity and utility."
    )
    inception_weights: str = Field(
        "", description="Inception-v3 ImageNet weights (.pth) for FID; empty: a CXR encoder trained at each site."
    )
    encoder_epochs: int = Field(5, ge=1, le=MAX_EPOCHS, description="Epochs of the CXR fidelity encoder.")
    site_baselines: bool = Field(
        True, description="Sites also train on their own real images (train-real-test-real) and on real plus "
        "synthetic (augmentation), for comparison.",
    )


class RunConfig(_Section):
    """The whole run. Defaults are the built-in demo: a 3-site federation on phantoms."""

    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    federation: FederationSection = Field(default_factory=FederationSection)
    generator: GeneratorConfig = Field(
        default_factory=GANSection, description="The generator family and its settings. Without this section: "
        "the GAN, or, with a privacy block, dp-merf (measured best under DP: README, Privacy).")
    privacy: PrivacySection | None = Field(None, description="Absent: no DP, and every output says not private.")
    sites: SitesSection = Field(default_factory=SitesSection)
    gate: GateSection = Field(default_factory=GateSection)
    alignment: AlignmentSection = Field(default_factory=AlignmentSection)
    release: ReleaseSection = Field(default_factory=ReleaseSection)
    classifier: ClassifierSection = Field(default_factory=ClassifierSection)
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)

    @model_validator(mode="before")
    @classmethod
    def _private_default_generator(cls, data: Any) -> Any:
        # the default generator is the one measured best at the run's privacy: with a privacy block
        # and no generator section, dp-merf (benchmarks/private_utility.py); the resolved config says so
        if isinstance(data, dict) and data.get("privacy") is not None and "generator" not in data:
            return {**data, "generator": {"family": PRIVATE_DEFAULT_FAMILY}}
        return data

    # ---- rules between sections: one method per section they constrain, checked in this order ----

    @model_validator(mode="after")
    def _sections_agree(self) -> RunConfig:
        self._check_privacy()
        self._check_classifier()
        self._check_alignment()
        self._check_generators()
        self._check_federation()
        return self

    def _check_privacy(self) -> None:
        if self.privacy is not None and self.privacy.delta is not None:
            for name, b in {"sites.budget": self.sites.budget, **{f"sites.budgets.{k}": v for k, v in
                                                                self.sites.budgets.items()}}.items():
                if self.privacy.delta > b.delta:
                    raise ValueError(f"privacy.delta ({self.privacy.delta:g}) exceeds {name}.delta ({b.delta:g})")
        if self.privacy is not None and self.run.mode == "centralized-real":
            raise ValueError("privacy: centralized-real pools the real images themselves; it has no DP variant")
        if self.privacy is not None and self.privacy.grad_sample_mode == "ghost":
            others = sorted({g.family for g in (self.generator, *self.sites.generators.values())} - {"gan", "dp-merf"})
            if others or self.run.mode == "fedavg-classifier":
                what = f"generator family {others[0]}" if others else "run.mode fedavg-classifier"
                raise ValueError(f"privacy.grad_sample_mode: ghost clipping is built for the GAN's discriminator; "
                                 f"{what} trains with DP-SGD through another loss (use hooks or functorch)")

    def _check_classifier(self) -> None:
        if self.classifier.task == "subtype":
            if self.data.label_set == BINARY_LABELS:
                raise ValueError("classifier.task: subtype needs a finer data.label_set than the binary one "
                                 "(e.g. [normal, bacteria, virus])")
            if self.run.mode == "fedavg-classifier":
                raise ValueError("classifier.task: subtype runs in the substitution, federated and centralized-real "
                                 "modes; fedavg-classifier trains the binary task only")

    def _check_alignment(self) -> None:
        if self.alignment.enabled and self.data.label_set != BINARY_LABELS:
            raise ValueError("alignment.enabled: the intensity alignment matches normal and pneumonia histograms; "
                             "it does not take a finer data.label_set")
        if self.alignment.enabled and self.run.mode != "substitution":
            raise ValueError("alignment.enabled: post-hoc alignment applies to run.mode=substitution")

    def _check_generators(self) -> None:
        """The run's generator and the sites' own, against the federated mode."""
        if (self.run.mode == "federated" and isinstance(self.generator, MeanEmbeddingSection)
                and self.federation.rounds != 1):
            raise ValueError("federation.rounds: a dp-merf generator's sites send their statistic once, so the "
                             "federated mode runs exactly 1 round (set federation.rounds: 1)")
        if self.sites.generators and self.run.mode == "federated":
            raise ValueError("sites.generators: federated averaging needs one generator architecture at every site")

    def _check_federation(self) -> None:
        fed = self.federation
        if fed.secure_aggregation is not None:
            if self.run.mode not in ("federated", "fedavg-classifier"):
                raise ValueError("federation.secure_aggregation: masks model updates, so it applies to the federated "
                                 "and fedavg-classifier modes (a synthetic release is public by design)")
            if fed.client_dp is not None:
                raise ValueError("federation.secure_aggregation with federation.client_dp: the server-side DP "
                                 "wrapper clips each site's update, which secure aggregation hides from it")
            if fed.num_sites < 3:
                raise ValueError("federation.secure_aggregation needs at least 3 sites (with 2, each learns "
                                 "the other's update from the average)")
        if fed.client_dp is not None and self.run.mode not in ("federated", "fedavg-classifier"):
            raise ValueError("federation.client_dp applies to the federated and fedavg-classifier modes only")
        if fed.min_sites > fed.num_sites:
            raise ValueError(f"federation.min_sites ({fed.min_sites}) exceeds federation.num_sites ({fed.num_sites})")

    # ---- conversions -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return _validate(cls, json.loads(text), "<message>")

    def generator_for(self, site: str) -> GANSection | DDPMSection | SDLoRASection | MeanEmbeddingSection:
        """The generator a (simulated) site trains: its own choice, else the run's."""
        return self.sites.generators.get(site, self.generator)

    def classifier_arch(self) -> str:
        if self.classifier.arch != "auto":
            return self.classifier.arch
        return "small-cnn" if self.data.resolution <= 32 else "resnet18"


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid run config ({origin}):"]
    tags = {family_name(s) for s in GENERATOR_SECTIONS}
    for e in err.errors():
        loc = list(e["loc"])
        # a tagged union adds the tag to the location (generator.gan.epochs): users wrote generator.epochs
        loc = [p for i, p in enumerate(loc) if not (p in tags and i > 0 and (
            loc[i - 1] == "generator" or (i > 1 and loc[i - 2] == "generators")))]
        where = ".".join(str(p) for p in loc) or "<top level>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/demo.yaml for every key)"
        elif "input" in e and e["type"] not in ("missing",) and loc:
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def _validate(model: type[RunConfig], data: Any, origin: str) -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid run config ({origin}): the top level must be a mapping of sections")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader without anchors and aliases: fedsynth configs never need them, and nested
    aliases let a few hundred bytes expand to gigabytes ("billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in fedsynth configs", event.start_mark
            )
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, f"YAML anchors (&{event.anchor}) are not allowed in fedsynth configs", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, origin: str) -> Any:
    """Parse one YAML document as fedsynth reads configs: safe types only, no anchors or aliases.
    Raises ConfigError naming ``origin``; never anything else."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin} is not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{origin} is not a usable config: its YAML is nested too deeply") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise ConfigError(f"{origin} is not a usable config: {err}") from None


def _read_config_text(p: Path, kind: str) -> str:
    """The text of a config file: at most MAX_CONFIG_BYTES, UTF-8; ConfigError otherwise."""
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{kind} {p} cannot be read ({err.strerror or err})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{kind} {p} is larger than {MAX_CONFIG_BYTES // 2**10} KiB; a config is a few KB of YAML")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{kind} {p} is not UTF-8 text") from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["federation.num_sites=4", "run.seed=1"]`` into a nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"override {key.strip()!r}: the value is longer than {MAX_CONFIG_BYTES // 2**10} KiB")
        try:
            value = load_yaml(raw, "the value")
        except ConfigError as err:
            raise ConfigError(f"override {item[:200]!r}: {err}") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from YAML (or the built-in defaults when ``path`` is None)."""
    data: dict[str, Any] = {}
    origin = "built-in defaults"
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = load_yaml(_read_config_text(p, "config file"), f"config file {p}")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"invalid run config ({p}): the top level must be a mapping of sections")
        data = loaded or {}
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        origin += " + overrides"
    return _validate(RunConfig, data, origin)


class SiteConfig(_Section):
    """A deployed site's own settings (site.yaml, named by the SuperNode's node config).

    The site, not the server, decides its budget; its keys and ledger live in state_dir.
    """

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    data_path: str = Field(..., description="The site's images: an npz bundle or a folder (see README, Data).")
    state_dir: str = Field(..., description="Holds <name>.key, <name>.pub and ledger.jsonl; keep it backed up.")
    budget: BudgetSection = Field(default_factory=BudgetSection)
    output_dir: str = Field("", description="Site-local outputs (grids, generator); default state_dir/outputs.")
    device: Device = "auto"
    generator: GeneratorConfig | None = Field(None, description="This site's generator; default: the run's.")
    policy: SitePolicy = Field(
        default_factory=lambda: SitePolicy(**DEPLOYMENT_POLICY),
        description="This site's rules. Keys it does not set take the deployment defaults (require_dp, "
        "require_gate, max_epsilon 10), not the simulation's.",
    )
    consortium_keys: dict[str, str] = Field(
        default_factory=dict, description="The other sites' public key files (site name -> path): the site measures "
        "fidelity and utility only on synthetic images it can trace to a release one of them signed.",
    )

    @field_validator("policy", mode="before")
    @classmethod
    def _deployment_defaults(cls, v: Any) -> Any:
        # a site.yaml that sets some policy keys keeps the deployment defaults for the others
        return {**DEPLOYMENT_POLICY, **v} if isinstance(v, dict) else v

    def unsafe_policy(self) -> list[str]:
        """What a hospital's security review would flag in this site's policy."""
        pol = self.policy
        out = []
        if not pol.require_dp:
            out.append("policy.require_dp is false: a request without a privacy block gets a plain release")
        if not pol.require_gate:
            out.append("policy.require_gate is false: releases may skip the memorization gate")
        if pol.max_epsilon is None:
            out.append("policy.max_epsilon is not set: any epsilon the server asks for is accepted")
        if pol.allow_alignment_without_dp:
            out.append("policy.allow_alignment_without_dp is true: an exact intensity histogram may leave the site")
        if pol.evaluate_unsigned_synthetic:
            out.append("policy.evaluate_unsigned_synthetic is true: the server may query fidelity on any images")
        return out


def load_site_config(path: str | Path) -> SiteConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"site config not found: {p}")
    data = load_yaml(_read_config_text(p, "site config"), f"site config {p}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid site config ({p}): the top level must be a mapping of settings")
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, str(p)).replace("run config", "site config")) from None
