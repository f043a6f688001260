"""Training loops on small seeded data: losses fall, the best checkpoint is kept, degraded accuracy is exact
for an exact parity model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import parm.export.train as train_module
from parm.errors import ConfigError, DataError
from parm.export.code_registry import CodeShape, SubtractionDecoder, SumEncoder, get_code
from parm.export.data import Dataset, DataSplits, load_digits_splits
from parm.export.degraded import LossPattern, degraded_accuracy, erasure_patterns, paired_gap_stderr, tolerated_patterns
from parm.export.fsource import OnnxModule
from parm.export.models import DigitsCNN, build_parity_model
from parm.export.onnx_export import export_onnx
from parm.export.train import (
    Augmentation,
    TrainConfig,
    augment_queries,
    train_classifier,
    train_learned_code,
    train_parity,
)


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    splits = load_digits_splits(seed=0)
    return DataSplits(splits.train.subset(np.arange(300)), splits.val, splits.test)


def test_classifier_loss_falls_and_the_best_epoch_is_kept(digits: DataSplits) -> None:
    torch.manual_seed(0)
    model = DigitsCNN()
    result = train_classifier(model, digits.train, digits.val, TrainConfig(epochs=4, batch_size=32, lr=3e-3))
    losses = [log.loss for log in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_val_metric == max(log.val_metric for log in result.history) > 0.6
    assert not model.training
    f_only = degraded_accuracy(model, model, digits.val, 2, SumEncoder(2), SubtractionDecoder(2)).f_accuracy
    assert f_only == pytest.approx(result.best_val_metric)


def test_training_is_reproducible_and_max_steps_caps_it(digits: DataSplits) -> None:
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, seed=5, max_steps=4)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DigitsCNN()
        result = train_classifier(model, digits.train, digits.val, cfg)
        states.append(model.state_dict())
    assert result.steps == 4 and len(result.history) == 1
    for name, tensor in states[0].items():
        torch.testing.assert_close(states[1][name], tensor, atol=0, rtol=0)


def test_parity_training_loss_falls_and_keeps_its_best_checkpoint(digits: DataSplits) -> None:
    torch.manual_seed(0)
    f = DigitsCNN()
    train_classifier(f, digits.train, digits.val, TrainConfig(epochs=3, batch_size=32, lr=3e-3))
    torch.manual_seed(1)
    parity = build_parity_model(f)
    encoder, decoder = SumEncoder(2), SubtractionDecoder(2)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=2, groups_per_epoch=640)
    unlabelled_train = Dataset(digits.train.x)  # ParM needs no labels
    result = train_parity(parity, f, unlabelled_train, digits.val, cfg, 2, encoder, decoder)
    losses = [log.loss for log in result.history]
    assert losses[-1] < 0.5 * losses[0] and result.steps == 30
    report = degraded_accuracy(f, parity, digits.val, 2, encoder, decoder, seed=cfg.seed)
    assert report.degraded_agreement_with_f == pytest.approx(result.best_val_metric)
    assert result.best_val_metric == max(log.val_metric for log in result.history)


def test_degraded_accuracy_of_an_exact_parity_model_equals_f() -> None:
    torch.manual_seed(0)
    f = nn.Linear(5, 4, bias=False)  # linear F: F itself is an exact parity model for the sum code
    x = torch.randn(7, 5)  # odd N with k = 2: the last group is topped up, every query still erased once
    labels = np.array([0, 1, 2, 3, 0, 1, 2], dtype=np.int64)
    data = Dataset(x.numpy(), labels)
    report = degraded_accuracy(f, f, data, 2, SumEncoder(2), SubtractionDecoder(2), groupings=3)
    expected = float((f(x).argmax(dim=1).numpy() == labels).mean())
    assert report.f_accuracy == pytest.approx(expected)
    assert report.degraded_accuracy == pytest.approx(expected)
    assert report.degraded_agreement_with_f == 1.0 and report.erasures == 21
    assert degraded_accuracy(f, f, Dataset(x.numpy()), 2, SumEncoder(2), SubtractionDecoder(2)).f_accuracy is None


def test_config_and_k_are_checked(digits: DataSplits) -> None:
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(epochs=1, batch_size=1, lr=0.0)
    with pytest.raises(ValueError, match="built for k=2, training asked for k=3"):
        degraded_accuracy(DigitsCNN(), DigitsCNN(), digits.val, 3, SumEncoder(2), SubtractionDecoder(3))
    with pytest.raises(DataError, match="needs labels"):
        train_classifier(DigitsCNN(), Dataset(digits.train.x), digits.val, TrainConfig(1, 8, 1e-3))


def test_parity_model_has_f_architecture_and_fresh_weights() -> None:
    torch.manual_seed(0)
    f = DigitsCNN().eval()
    for p in f.parameters():
        p.requires_grad_(False)
    parity = build_parity_model(f)
    assert parity.training and all(p.requires_grad for p in parity.parameters())
    shapes = [p.shape for p in parity.parameters()]
    assert shapes == [p.shape for p in f.parameters()]
    assert not any(torch.equal(a, b) for a, b in zip(parity.parameters(), f.parameters(), strict=True))
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(parity(x), parity(x), atol=0, rtol=0)  # trained without dropout, unlike F
    assert [m.p for m in f.modules() if isinstance(m, nn.Dropout)] == [0.25]
    wide = build_parity_model(f, width=2)
    assert [m.p for m in wide.modules() if isinstance(m, nn.Dropout)] == [0.0]
    assert wide.width == 2 and sum(p.numel() for p in wide.parameters()) > 2 * sum(p.numel() for p in f.parameters())
    with pytest.raises(ConfigError, match="needs a DigitsCNN"):
        build_parity_model(nn.Linear(2, 2), width=2)
    linear = nn.Linear(3, 2)
    assert not torch.equal(build_parity_model(linear).weight, linear.weight)


def test_an_interrupted_run_resumes_to_the_same_weights(
    digits: DataSplits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=4)
    torch.manual_seed(0)
    straight = DigitsCNN()
    expected = train_classifier(straight, digits.train, digits.val, cfg)

    checkpoint = tmp_path / "f.pt"
    calls = {"n": 0}
    real_accuracy = train_module.accuracy

    def interrupted(model: nn.Module, data: Dataset) -> float:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # dies while validating epoch 2: the checkpoint holds epoch 1
        return real_accuracy(model, data)

    torch.manual_seed(0)
    monkeypatch.setattr(train_module, "accuracy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(DigitsCNN(), digits.train, digits.val, cfg, checkpoint=checkpoint)
    monkeypatch.setattr(train_module, "accuracy", real_accuracy)
    torch.manual_seed(0)
    resumed = DigitsCNN()
    result = train_classifier(resumed, digits.train, digits.val, cfg, checkpoint=checkpoint)
    assert [h.epoch for h in result.history] == [1, 2, 3] and result.steps == expected.steps
    assert [h.loss for h in result.history] == pytest.approx([h.loss for h in expected.history], rel=1e-5)
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-6, rtol=1e-5)
    # a finished checkpoint reloads the best epoch without training; another config is refused
    again = DigitsCNN()
    assert train_classifier(again, digits.train, digits.val, cfg, checkpoint=checkpoint).best_epoch == result.best_epoch
    with pytest.raises(ConfigError, match="saved for config"):
        train_classifier(DigitsCNN(), digits.train, digits.val, TrainConfig(2, 64, 3e-3), checkpoint=checkpoint)


def test_r_parity_models_train_together_and_are_judged_on_every_erasure_pattern(digits: DataSplits) -> None:
    torch.manual_seed(0)
    f = DigitsCNN()
    train_classifier(f, digits.train, digits.val, TrainConfig(epochs=2, batch_size=32, lr=3e-3))
    code = get_code("linear")
    shape = CodeShape(3, 2, (1, 8, 8), (10,))
    encoder, decoder = code.encoder(shape), code.decoder(shape)
    torch.manual_seed(1)
    parities = [build_parity_model(f) for _ in range(2)]
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=2, groups_per_epoch=320, distill_weight=0.5)
    result = train_parity(parities, f, Dataset(digits.train.x), digits.val, cfg, 3, encoder, decoder)
    assert result.history[-1].loss < result.history[0].loss
    report = degraded_accuracy(f, parities, digits.val, 3, encoder, decoder, seed=cfg.seed)
    assert [(e.erased, e.lost_parities) for e in report.by_erasures] == [(1, 0), (2, 0), (1, 1)]
    one, two, one_from_one_parity = report.by_erasures
    assert two.rebuilt == 2 * one.rebuilt  # 3 pairs x 2 slots vs 3 slots
    # with one parity lost: parity 0 (all ones) rebuilds any slot, parity 1 (DCT row 1, zero on the middle slot)
    # only the outer two: 5 of the 6 (slot, parity) patterns
    assert one_from_one_parity.rebuilt == 5 * one.rebuilt // 3
    mean_agreement = sum(e.agreement_with_f for e in report.by_erasures) / 3
    assert result.best_val_metric == pytest.approx(mean_agreement)


def test_learned_code_loss_falls_through_a_frozen_f(digits: DataSplits) -> None:
    torch.manual_seed(0)
    f = DigitsCNN()
    train_classifier(f, digits.train, digits.val, TrainConfig(epochs=2, batch_size=32, lr=3e-3))
    before = {name: p.clone() for name, p in f.state_dict().items()}
    code = get_code("learned")
    shape = CodeShape(2, 1, (1, 8, 8), (10,))
    torch.manual_seed(3)
    encoder, decoder = code.encoder(shape), code.decoder(shape)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-3, seed=1, groups_per_epoch=640)
    result = train_learned_code(encoder, decoder, f, Dataset(digits.train.x), digits.val, cfg)
    losses = [h.loss for h in result.history]
    assert losses[-1] < 0.9 * losses[0]
    for name, tensor in f.state_dict().items():
        torch.testing.assert_close(tensor, before[name], atol=0, rtol=0)  # F stays frozen


def test_erasure_patterns() -> None:
    assert erasure_patterns(3, 1) == [(0,), (1,), (2,)]
    assert erasure_patterns(3, 2) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    assert erasure_patterns(2, 5) == [(0,), (1,), (0, 1)]


def test_tolerated_patterns_add_lost_parities_where_the_decoder_still_rebuilds() -> None:
    sum_code = get_code("sum").decoder(CodeShape(3))
    assert tolerated_patterns(sum_code) == [LossPattern((0,)), LossPattern((1,)), LossPattern((2,))]
    berrut = get_code("berrut").decoder(CodeShape(2, 2))
    assert tolerated_patterns(berrut) == [
        LossPattern((0,)),
        LossPattern((1,)),
        LossPattern((0, 1)),
        LossPattern((0,), (0,)),
        LossPattern((1,), (0,)),
        LossPattern((0,), (1,)),
        LossPattern((1,), (1,)),
    ]
    linear = get_code("linear").decoder(CodeShape(3, 2))  # DCT row 1 is zero on slot 1
    assert LossPattern((1,), (0,)) not in tolerated_patterns(linear)
    assert LossPattern((0,), (0,)) in tolerated_patterns(linear)
    torch.testing.assert_close(LossPattern((1,), (0,)).available(3, 2), torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]))


def _shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` [C, H, W] moved down dy and right dx pixels, zero padded."""
    height, width = image.shape[-2:]
    padded = nn.functional.pad(image, (1, 1, 1, 1))
    return padded[:, 1 - dy : 1 - dy + height, 1 - dx : 1 - dx + width]


def test_augmentation_is_seeded_and_shifts_by_whole_pixels(digits: DataSplits) -> None:
    x = torch.from_numpy(digits.train.x[:64])
    shift = Augmentation(shift=1)
    torch.manual_seed(0)
    moved = augment_queries(x, shift)
    torch.manual_seed(0)
    torch.testing.assert_close(augment_queries(x, shift), moved, atol=0, rtol=0)  # same seed, same draws
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    for image, result in zip(x, moved, strict=True):  # each image is one of its 9 whole-pixel shifts, unblurred
        assert any(torch.allclose(_shifted(image, dy, dx), result, atol=1e-6) for dy, dx in offsets)
    assert not torch.equal(moved, x)
    full = augment_queries(x, Augmentation(shift=1, rotate=10.0, scale=0.1, noise=0.05))
    assert full.shape == x.shape and not torch.allclose(full, moved)
    noisy = augment_queries(torch.zeros(3, 5), Augmentation(noise=0.1))  # noise alone works for any query
    assert noisy.shape == (3, 5) and noisy.abs().sum() > 0
    with pytest.raises(ConfigError, match="need image queries"):
        augment_queries(torch.zeros(3, 5), shift)
    with pytest.raises(ConfigError, match="augmentation needs"):
        Augmentation(scale=1.0)


@pytest.fixture(scope="module")
def small_f(digits: DataSplits) -> DigitsCNN:
    torch.manual_seed(0)
    f = DigitsCNN()
    train_classifier(f, digits.train, digits.val, TrainConfig(epochs=2, batch_size=32, lr=3e-3))
    return f


def test_augmented_parity_training_is_reproducible_and_its_loss_falls(
    digits: DataSplits, small_f: DigitsCNN, tmp_path: Path
) -> None:
    cfg = TrainConfig(
        epochs=3, batch_size=64, lr=3e-3, seed=2, groups_per_epoch=640, augment=Augmentation(shift=1, noise=0.02)
    )
    unlabelled_train = Dataset(digits.train.x)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        parity = build_parity_model(small_f)
        result = train_parity(
            parity, small_f, unlabelled_train, digits.val, cfg, 2, SumEncoder(2), SubtractionDecoder(2)
        )
        runs.append((result, parity.state_dict()))
    (result, state), (_, again) = runs
    assert result.history[-1].loss < 0.7 * result.history[0].loss
    for name, tensor in state.items():
        torch.testing.assert_close(again[name], tensor, atol=0, rtol=0)
    # an ONNX-only F answers the augmented queries through onnxruntime, on the fly: the same run, to float precision
    path = export_onnx(
        small_f,
        (torch.rand(2, 1, 8, 8),),
        ["input"],
        ["logits"],
        {"input": {0: "b"}, "logits": {0: "b"}},
        tmp_path / "f.onnx",
    )
    torch.manual_seed(1)
    onnx_run = train_parity(
        build_parity_model(small_f),
        OnnxModule(path),
        unlabelled_train,
        digits.val,
        cfg,
        2,
        SumEncoder(2),
        SubtractionDecoder(2),
    )
    assert onnx_run.history[0].loss == pytest.approx(result.history[0].loss, rel=1e-3)
    assert onnx_run.history[-1].loss < 0.7 * onnx_run.history[0].loss


def test_paired_gap_stderr_pairs_each_query_with_f() -> None:
    f_correct = torch.tensor([True, True, False, True])
    # one answer per query: differences [0, 1, 0, 0], sample std 0.5, over sqrt(4) queries
    assert paired_gap_stderr(f_correct, torch.tensor([True, False, False, True])) == pytest.approx(25.0)
    # two answers per query, averaged per query first: differences [0, 0.5, 0, 0]
    correct = torch.tensor([True, True, True, False, False, False, True, True])
    index = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert paired_gap_stderr(f_correct, correct, index) == pytest.approx(12.5)
    assert paired_gap_stderr(f_correct, f_correct) == 0.0  # the same answers: no uncertainty about a zero gap
