"""One code for one F: its typed config, its training (parity models, or encoder/decoder networks) and the export of
every network it serves, each checked against torch on fresh inputs.

What a code trains depends on what answers its parities (``codes.ParityKind``) and whether its encoder and decoder
have weights (``Code.trainable``):

- ParM codes (``sum``, ``concat``, ``linear``): r parity models, trained together (``train.train_parity``);
- learned codes: the encoder and decoder networks, end to end through the frozen F (``train.train_learned_code``);
- Berrut: nothing; F answers the parities and the encoder and decoder are fixed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from parm.backend.orchestrator import contract
from parm.errors import ConfigError

from .code_registry import Code, CodeShape, Decoder, Encoder, ParityKind, availability, get_code
from .concat import tile_grid
from .data import Dataset
from .fsource import FSource, LoadedF
from .models import PARITY_FAMILIES, MultiHead, TileHeads, has_pooled_head
from .onnx_export import export_onnx, export_torchscript, verify_onnx, verify_torchscript
from .train import Augmentation, TrainConfig, TrainResult, train_learned_code, train_parity

logger = logging.getLogger(__name__)

PARITY_CONFIG = TrainConfig(epochs=60, batch_size=256, lr=3e-3, groups_per_epoch=20_000)
"""ParM parity training: many random groups per epoch (digits is tiny, groups are cheap, the parity model needs
many of them), for 60 epochs: parity models underfit F's sums (at k = 4 they rebuild only about 95% of F's answers
on their own training queries), and doubling 30 epochs cut the validation gap to F at k = 2, 3, 4 (with dropout off,
``models.without_dropout``) from 2.4 / 4.9 / 7.6 points to 2.1 / 3.5 / 5.1."""
AUGMENT = Augmentation(shift=1)
"""The ``aug`` code option: members moved by up to one pixel. Measured on digits, it lost (validation gap to F at
k = 4: 16.2 points against 7.6 without): the parity model underfits, and moved digits only make its task harder."""
LEARNED_CONFIG = TrainConfig(epochs=30, batch_size=256, lr=1e-3, groups_per_epoch=20_000)
"""Learned-code training: the same budget of groups, a lower rate (the gradient passes through F)."""


PARITY_INITS = ("fresh", "f")
RECIPES = ("project", "parm")


def parm_recipe(k: int) -> TrainConfig:
    """ParM's published training of a parity model, the reference every report shows: MSE to the sum of F's
    answers, Adam (lr 1e-3, weight decay 1e-5) at a constant rate, 64 groups per batch at k = 2 and 32 otherwise,
    300 epochs of one group per k training queries, the best epoch by validation reconstruction error."""
    return TrainConfig(
        epochs=300,
        batch_size=64 if k == 2 else 32,
        lr=1e-3,
        weight_decay=1e-5,
        schedule="constant",
        select_by="reconstruction",
    )


@dataclass(frozen=True)
class CodeConfig:
    """A code to train and serve: the registered code, k, r, the parity architecture and the training run.

    ``parity_arch``: ``None`` follows the rule of ``fsource`` (F's own architecture, or the CNN/MLP family for an
    ONNX-only F); ``"cnn"``/``"mlp"`` force a family. ``width`` widens the parity model (a documented deviation from
    ParM's same-architecture rule; for a torch F only a ``DigitsCNN`` can be widened). ``augment`` changes member
    queries in parity training (codes with trained parity models only). ``train`` defaults by kind.
    """

    code: str = "sum"
    k: int = 2
    r: int = 1
    parity_arch: str | None = None
    width: int = 1
    parity_init: str = "fresh"
    distill: float = 0.0
    augment: Augmentation | None = None
    train: TrainConfig | None = None
    image_shape: tuple[int, ...] | None = None
    """[C, H, W] of queries that are images given flat (``CodeShape.image_shape``), for the image codes."""
    parity_loss: str = "mse"
    """``kl``: parity models trained by KL to F's softmax (``TrainConfig.loss``), for per-member heads (collage)."""
    recipe: str = "project"
    """``parm``: ParM's published training (``parm_recipe``), the reference row of reports."""

    def __post_init__(self) -> None:
        code = get_code(self.code)
        code.check(self.k, self.r)
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {list(RECIPES)}, got {self.recipe!r}")
        if (self.recipe == "parm" or self.parity_loss != "mse") and code.parity is not ParityKind.TRAINED:
            raise ConfigError(f"code {self.code!r} trains no parity model: the parm and kl options train one")
        if self.parity_loss == "kl" and code.parity_output is None:
            raise ConfigError(
                f"code {self.code!r}: a KL loss needs parity answers that are each one member's (the collage's "
                "heads); a sum of answers is not a distribution"
            )
        if self.augment is not None and code.parity is not ParityKind.TRAINED:
            raise ConfigError(f"code {self.code!r} trains no parity model: augmentation applies to parity training")
        if self.parity_arch is not None and self.parity_arch not in PARITY_FAMILIES:
            raise ConfigError(f"parity_arch must be None or one of {list(PARITY_FAMILIES)}, got {self.parity_arch!r}")
        if self.width < 1:
            raise ConfigError(f"width must be >= 1, got {self.width}")
        if self.distill < 0:
            raise ConfigError(f"distill must be >= 0, got {self.distill}")
        if self.parity_init not in PARITY_INITS:
            raise ConfigError(f"parity_init must be one of {list(PARITY_INITS)}, got {self.parity_init!r}")

    @classmethod
    def parse(cls, text: str) -> CodeConfig:
        """``name:k[:r][@option,...]`` as the CLI writes codes, e.g. ``sum:3``, ``linear:2:2``, ``berrut:4``,
        ``sum:4@finit,distill``. Options: ``finit`` (parity_init f), ``distill`` (distill 1.0), ``w<N>`` (width N),
        ``aug`` (augmented member queries, ``AUGMENT``), ``kl`` (parity loss KL, collage), ``parm`` (ParM's
        published recipe, ``parm_recipe``), ``e<N>`` (N epochs of the code's training)."""
        spec, _, options = text.partition("@")
        parts = spec.split(":")
        if not 2 <= len(parts) <= 3 or not all(p.strip().isdigit() for p in parts[1:]):
            raise ConfigError(f"expected a code as name:k[:r][@options] (e.g. sum:3, linear:2:2), got {text!r}")
        values: dict[str, object] = {}
        epochs = None
        for option in filter(None, (o.strip() for o in options.split(","))):
            if option == "finit":
                values["parity_init"] = "f"
            elif option == "distill":
                values["distill"] = 1.0
            elif option.startswith("w") and option[1:].isdigit():
                values["width"] = int(option[1:])
            elif option == "aug":
                values["augment"] = AUGMENT
            elif option == "kl":
                values["parity_loss"] = "kl"
            elif option == "parm":
                values["recipe"] = "parm"
            elif option.startswith("e") and option[1:].isdigit() and int(option[1:]) > 0:
                epochs = int(option[1:])
            else:
                raise ConfigError(
                    f"{text!r}: unknown code option {option!r}; known: finit, distill, w<N>, aug, kl, parm, e<N>"
                )
        config = cls(parts[0].strip(), int(parts[1]), int(parts[2]) if len(parts) == 3 else 1, **values)
        if epochs is not None:
            config = dataclasses.replace(config, train=dataclasses.replace(config.training(), epochs=epochs))
        return config

    @property
    def variant(self) -> str:
        """The deviations from the code's plain form, in words ('' when none)."""
        words = []
        if self.width > 1:
            words.append(f"parity width {self.width}")
        if self.parity_init == "f":
            words.append("parity starts from F's weights")
        if self.distill:
            words.append(f"distillation {self.distill:g}")
        if self.augment is not None:
            words.append("augmented queries")
        if self.parity_loss == "kl":
            words.append("KL to F's softmax")
        if self.recipe == "parm":
            words.append("ParM's published recipe")
        if self.train is not None:
            words.append(f"{self.train.epochs} epochs")
        return ", ".join(words)

    @property
    def label(self) -> str:
        suffix = f", r={self.r}" if self.r > 1 else ""
        variant = f"; {self.variant}" if self.variant else ""
        return f"{self.code} (k={self.k}{suffix}{variant})"

    @property
    def slug(self) -> str:
        """A file-name-safe identifier of the code, its shape and its variant."""
        slug = f"{self.code}-k{self.k}-r{self.r}" + (f"-w{self.width}" if self.width > 1 else "")
        slug += ("-finit" if self.parity_init == "f" else "") + (f"-d{self.distill:g}" if self.distill else "")
        slug += ("-aug" if self.augment is not None else "") + ("-kl" if self.parity_loss == "kl" else "")
        return slug + ("-parm" if self.recipe == "parm" else "")

    def training(self, quick: bool = False) -> TrainConfig:
        """The training run: ``train`` or the default by kind, with this code's distillation and augmentation
        (cut to a few steps when ``quick``)."""
        base = self.train
        if base is None and self.recipe == "parm":
            base = parm_recipe(self.k)
        elif base is None:
            base = LEARNED_CONFIG if get_code(self.code).trainable else PARITY_CONFIG
        if self.parity_loss != base.loss:
            base = dataclasses.replace(base, loss=self.parity_loss)
        if self.distill:
            base = dataclasses.replace(base, distill_weight=self.distill)
        if self.augment is not None:
            base = dataclasses.replace(base, augment=self.augment)
        return base.quick() if quick else base


@dataclass
class TrainedCode:
    """A code's networks after training (or as built, for codes with nothing to train)."""

    config: CodeConfig
    encoder: Encoder
    decoder: Decoder
    parity_models: list[nn.Module] = field(default_factory=list)
    """The trained parity models (ParM codes); empty when F answers the parities."""
    result: TrainResult | None = None
    train_seconds: float = 0.0
    chosen: str = ""
    """Parameters a training-free code chose on validation (``Code.select``), in words; '' when none."""

    @property
    def code(self) -> Code:
        return get_code(self.config.code)

    def parity_side(self, f_module: nn.Module) -> list[nn.Module]:
        """The r modules that answer the parity queries: the parity models, or F itself r times."""
        return list(self.parity_models) if self.parity_models else [f_module] * self.config.r


def code_shape(config: CodeConfig, f: LoadedF) -> CodeShape:
    """What the code's networks are built for: its k and r, F's query and answer shapes, the image shape."""
    return CodeShape(config.k, config.r, tuple(f.input.dims), tuple(f.output.dims), config.image_shape)


def build_code(config: CodeConfig, f: LoadedF) -> tuple[Encoder, Decoder]:
    """The code's encoder and decoder for F's query and answer shapes (freshly initialised if trainable)."""
    code = get_code(config.code)
    shape = code_shape(config, f)
    return code.encoder(shape), code.decoder(shape)


def parity_builder(config: CodeConfig, f: LoadedF) -> Callable[[], nn.Module]:
    """Builds one fresh parity model: F's architecture by ``fsource``'s rule, with k heads where the code's parity
    answers in another shape than F (``Code.parity_output``, the collage): a CNN with a global-average-pool head
    gets it split per tile (``models.TileHeads``), any other F its last linear layer widened (``models.MultiHead``)."""
    make = f.parity_architecture(config.parity_arch, config.width)
    shape = code_shape(config, f)
    out = get_code(config.code).parity_output_shape(shape)
    if out == shape.output_shape:
        return make

    def build() -> nn.Module:
        net = make()
        if has_pooled_head(net) and len(shape.query_shape) == 3:
            return TileHeads(net, shape.query_shape, tile_grid(config.k), out)
        return MultiHead(net, out)

    return build


def check_applies(config: CodeConfig, f: LoadedF) -> None:
    """Raises ``ConfigError`` saying why when the code cannot apply to F (image tiling on queries that are not
    images, a widened parity model of an architecture that cannot widen, a learned code through an F that cannot
    run as torch operations), before any training."""
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave training's draws as they are
        build_code(config, f)
        code = get_code(config.code)
        if code.parity is ParityKind.TRAINED:
            parity_builder(config, f)()
    if code.trainable:
        _require_differentiable(config, f)


def _require_differentiable(config: CodeConfig, f: LoadedF) -> None:
    if not f.differentiable:
        raise ConfigError(
            f"{config.label}: a learned code trains through F, and F ({f.description}) cannot run as torch "
            f"operations ({f.graph_error}); give F as a TorchScript file or a torch module, or choose a ParM "
            "code or berrut"
        )


def train_code(
    config: CodeConfig,
    f: LoadedF,
    train: Dataset,
    val: Dataset,
    seed: int = 0,
    checkpoint: Path | None = None,
    quick: bool = False,
) -> TrainedCode:
    """Trains what the code needs (see the module docstring); ``quick`` cuts training to a few steps (smoke runs).

    Reproducible for a seed (initialisation is drawn after seeding the global RNG, which is restored afterwards).
    With ``checkpoint``, an interrupted run resumes and a finished one reloads its best epoch without retraining.
    """
    cfg = dataclasses.replace(config.training(quick), seed=seed)
    code = get_code(config.code)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        encoder, decoder = build_code(config, f)
        trained = TrainedCode(config, encoder, decoder)
        if code.parity is ParityKind.TRAINED:
            make = parity_builder(config, f)
            trained.parity_models = [make() for _ in range(config.r)]
            if config.parity_init == "f":
                for model in trained.parity_models:
                    _start_from_f(model, f)
            trained.result = train_parity(
                trained.parity_models, f.module, train, val, cfg, config.k, encoder, decoder, checkpoint
            )
        elif code.trainable:
            _require_differentiable(config, f)
            trained.result = train_learned_code(encoder, decoder, f.trainable_module, train, val, cfg, checkpoint)
        elif code.select is not None:
            shape = code_shape(config, f)
            selection = code.select(shape, f.module, val.x, seed)
            trained.encoder, trained.decoder, trained.chosen = selection.encoder, selection.decoder, selection.chosen
    # a reloaded checkpoint reports the training time it took when it was trained
    trained.train_seconds = trained.result.seconds if trained.result is not None else time.perf_counter() - started
    logger.info("%s: trained in %.1f s", config.label, trained.train_seconds)
    return trained


def _start_from_f(model: nn.Module, f: LoadedF) -> None:
    """Copies F's weights into a parity model of F's own architecture (``parity_init="f"``)."""
    try:
        model.load_state_dict(f.module.state_dict())
    except (RuntimeError, AttributeError) as error:
        raise ConfigError(
            f"parity_init='f' needs a parity model with F's architecture at width 1 ({f.description}): {error}"
        ) from error


@dataclass(frozen=True)
class ExportedCode:
    """ONNX and TorchScript files of F and the code's networks, by role (``f``, ``encoder``, ``decoder``, and
    ``parity`` or ``parity_0``.. for trained parity models); the user's own ONNX F has no TorchScript file."""

    onnx: dict[str, Path]
    torchscript: dict[str, Path]


def parity_roles(r: int) -> list[str]:
    """File/role names of r trained parity models: ``parity`` for ParM's one, ``parity_0``.. for r > 1 (their
    served names are ``<F>_<role>``, ``ModelNames.parities``)."""
    base = contract.PARITY_SUFFIX.removeprefix("_")
    return [base] if r == 1 else [f"{base}_{j}" for j in range(r)]


def onnx_file(out_dir: Path, role: str) -> Path:
    """Where ``export_code`` writes the ONNX file of a role (``f``, ``encoder``, ``decoder``, a parity role)."""
    return Path(out_dir) / "onnx" / f"{role}.onnx"


def _export_network(
    name: str,
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    fresh: list[tuple[torch.Tensor, ...]],
    names: tuple[tuple[str, ...], tuple[str, ...]],
    dynamic_axes: dict[str, dict[int, str]],
    out_dir: Path,
) -> tuple[Path, Path]:
    """Exports one network to ONNX and TorchScript and checks both against torch on ``fresh`` inputs."""
    onnx_path = export_onnx(module, example, names[0], names[1], dynamic_axes, onnx_file(out_dir, name))
    verify_onnx(onnx_path, module, fresh)
    ts_path = export_torchscript(module, example, out_dir / "torchscript" / f"{name}.pt")
    verify_torchscript(ts_path, module, fresh)
    return onnx_path, ts_path


def export_code(trained: TrainedCode, f: LoadedF, out_dir: Path, seed: int = 0) -> ExportedCode:
    """Exports F (unless it is the user's ONNX file, copied as it is), the parity models, encoder and decoder.

    Fresh inputs differ from the export example in batch size (and in k, for codes whose networks take any k), and
    erased slots hold NaN, so the checks prove the dynamic axes and the masking.
    """
    out_dir = Path(out_dir)
    config = trained.config
    k, r = config.k, config.r
    g = torch.Generator().manual_seed(seed)
    q_shape, o_shape = tuple(f.input.dims), tuple(f.output.dims)
    p_shape = trained.code.parity_output_shape(code_shape(config, f))

    def queries(*lead: int) -> torch.Tensor:
        return torch.rand(*lead, *q_shape, generator=g)

    def decoder_inputs(kk: int, batch: int, erased: int, lost: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
        outputs = torch.randn(kk, batch, *o_shape, generator=g)
        outputs[erased] = float("nan")  # an erased slot may hold anything; the decoder must not read it
        parity = torch.randn(r, batch, *p_shape, generator=g)
        parity[list(lost)] = float("nan")  # nor a lost parity's
        return parity, outputs, availability(kk, r, [erased], lost)

    onnx_files: dict[str, Path] = {}
    ts_files: dict[str, Path] = {}
    model_axes = {f.input.name: {0: "batch"}, f.output.name: {0: "batch"}}
    model_names = ((f.input.name,), (f.output.name,))
    model_fresh = [(queries(1),), (queries(5),)]
    if f.source is FSource.ONNX:
        assert f.onnx_file is not None
        target = onnx_file(out_dir, "f")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(f.onnx_file).read_bytes())
        verify_onnx(target, f.module, model_fresh)
        onnx_files["f"] = target
    else:
        onnx_files["f"], ts = _export_network(
            "f", f.module, (queries(2),), model_fresh, model_names, model_axes, out_dir
        )
        ts_files["f"] = ts
    for role, model in zip(parity_roles(r), trained.parity_models, strict=False):
        onnx_files[role], ts_files[role] = _export_network(
            role, model, (queries(2),), model_fresh, model_names, model_axes, out_dir
        )
    dynamic_k = trained.code.k_is_dynamic
    extra_k = [k + 1] if dynamic_k else []
    enc_axes = {contract.ENCODER_INPUT: {1: "batch"}, contract.ENCODER_OUTPUT: {1: "batch"}}
    dec_axes = {
        contract.DECODER_PARITY_INPUT: {1: "batch"},
        contract.DECODER_OUTPUTS_INPUT: {1: "batch"},
        contract.DECODER_OUTPUT: {1: "batch"},
    }
    if dynamic_k:
        enc_axes[contract.ENCODER_INPUT][0] = "k"
        for name in (contract.DECODER_OUTPUTS_INPUT, contract.DECODER_OUTPUT):
            dec_axes[name][0] = "k"
        dec_axes[contract.DECODER_AVAILABLE_INPUT] = {0: "k_plus_r"}
    onnx_files["encoder"], ts_files["encoder"] = _export_network(
        "encoder",
        trained.encoder,
        (queries(k, 2),),
        [(queries(k, 1),)] + [(queries(kk, 5),) for kk in [k, *extra_k]],
        ((contract.ENCODER_INPUT,), (contract.ENCODER_OUTPUT,)),
        enc_axes,
        out_dir,
    )
    onnx_files["decoder"], ts_files["decoder"] = _export_network(
        "decoder",
        trained.decoder,
        decoder_inputs(k, 2, 0),
        [decoder_inputs(k, 1, k - 1)]
        + [decoder_inputs(kk, 5, 1) for kk in [k, *extra_k]]
        + ([decoder_inputs(k, 3, 0, (r - 1,))] if r > 1 else []),
        (Decoder.input_names, (contract.DECODER_OUTPUT,)),
        dec_axes,
        out_dir,
    )
    return ExportedCode(onnx_files, ts_files)
