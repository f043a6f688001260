"""Training loops on small seeded data: losses fall, the best checkpoint is kept, degraded accuracy is exact
for an exact parity model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from parm.export.codes import SubtractionDecoder, SumEncoder
from parm.export.data import Dataset, DataSplits, load_digits_splits
from parm.export.models import DigitsCNN, build_parity_model
from parm.export.train import TrainConfig, degraded_accuracy, train_classifier, train_parity


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
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(epochs=1, batch_size=1, lr=0.0)
    with pytest.raises(ValueError, match="built for k=2, training asked for k=3"):
        degraded_accuracy(DigitsCNN(), DigitsCNN(), digits.val, 3, SumEncoder(2), SubtractionDecoder(3))
    with pytest.raises(ValueError, match="needs labels"):
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
    wide = build_parity_model(f, width=2)
    assert wide.width == 2 and sum(p.numel() for p in wide.parameters()) > 2 * sum(p.numel() for p in f.parameters())
    with pytest.raises(ValueError, match="needs a DigitsCNN"):
        build_parity_model(nn.Linear(2, 2), width=2)
    linear = nn.Linear(3, 2)
    assert not torch.equal(build_parity_model(linear).weight, linear.weight)
