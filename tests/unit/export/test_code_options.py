"""Code options that change how a code trains: ParM's published recipe (@parm), the epochs (@e<N>), the KL loss, a
constant learning rate and the selection of the kept epoch by validation reconstruction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from parm.errors import ConfigError
from parm.export.code_registry import CodeShape, get_code
from parm.export.code_training import CodeConfig, parm_recipe
from parm.export.data import Dataset
from parm.export.train import TrainConfig, _optimizer, parity_loss, train_parity


@pytest.mark.parametrize(("k", "batch"), [(2, 64), (3, 32), (4, 32)])
def test_parm_recipe_is_parms_published_training(k: int, batch: int) -> None:
    cfg = CodeConfig.parse(f"sum:{k}@parm").training()
    assert cfg == parm_recipe(k)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (300, batch, 1e-3, 1e-5)
    assert (cfg.schedule, cfg.select_by, cfg.loss, cfg.groups_per_epoch) == ("constant", "reconstruction", "mse", None)
    assert "ParM's published recipe" in CodeConfig.parse(f"sum:{k}@parm").label


def test_epochs_option_keeps_the_rest_of_the_codes_training() -> None:
    plain, short = CodeConfig.parse("collage:3@kl").training(), CodeConfig.parse("collage:3@kl,e7").training()
    assert short.epochs == 7 and short.loss == "kl"
    assert short == TrainConfig(**{**plain.__dict__, "epochs": 7})
    assert "7 epochs" in CodeConfig.parse("collage:3@e7").label
    with pytest.raises(ConfigError, match="e<N>"):
        CodeConfig.parse("sum:2@e0")


def test_recipe_and_kl_need_a_trained_parity_model() -> None:
    with pytest.raises(ConfigError, match="trains no parity model"):
        CodeConfig.parse("berrut:2@parm")
    with pytest.raises(ConfigError, match="KL loss"):
        CodeConfig.parse("concat:2@kl")


def test_kl_loss_is_zero_on_the_targets_and_positive_elsewhere() -> None:
    targets = torch.randn(1, 8, 3, 10)
    assert float(parity_loss(targets, targets, "kl")) == pytest.approx(0.0, abs=1e-6)
    assert float(parity_loss(targets + torch.randn_like(targets), targets, "kl")) > 0.01
    assert float(parity_loss(targets + 1.0, targets, "kl")) == pytest.approx(0.0, abs=1e-6)  # softmax ignores shifts


def test_constant_schedule_keeps_the_rate() -> None:
    model = nn.Linear(2, 2)
    for schedule, last in (("constant", 0.1), ("cosine", 0.0)):
        optimizer, scheduler = _optimizer(model, TrainConfig(epochs=1, batch_size=1, lr=0.1, schedule=schedule), 10)
        for _ in range(10):
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(last, abs=1e-9)


def test_selection_by_reconstruction_keeps_the_epoch_nearest_the_targets() -> None:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 4, bias=False)).eval()
    x = torch.randn(600, 1, 4, 4)
    train, val = Dataset(x[:500].numpy()), Dataset(x[500:].numpy())
    code = get_code("sum")
    encoder, decoder = code.encoder(CodeShape(2)), code.decoder(CodeShape(2))
    parity = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, select_by="reconstruction")
    result = train_parity(parity, f, train, val, cfg, 2, encoder, decoder)
    assert result.best_val_metric <= 0  # minus the validation MSE
    assert result.best_val_metric == max(h.val_metric for h in result.history)
    assert result.steps == 4 * (250 // 32 + (250 % 32 > 0))  # an epoch: one group per k training queries


def test_a_checkpoint_of_another_network_is_refused_by_name(tmp_path) -> None:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 4, bias=False)).eval()
    x = torch.randn(200, 1, 4, 4)
    train, val = Dataset(x[:160].numpy()), Dataset(x[160:].numpy())
    code = get_code("sum")
    encoder, decoder = code.encoder(CodeShape(2)), code.decoder(CodeShape(2))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-2)
    checkpoint = tmp_path / "parity.pt"
    train_parity(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), f, train, val, cfg, 2, encoder, decoder, checkpoint)
    other = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ConfigError, match="saved for another network"):
        train_parity(other, f, train, val, cfg, 2, encoder, decoder, checkpoint)
