"""The collage code: tiling (k = 2, 3 with its empty tile, 4; flat queries as images), heads wired to their
members, and a parity model that learns a toy F whose answer survives the tiling to near-perfect agreement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from parm.errors import ConfigError
from parm.export.code_registry import CodeShape, get_code
from parm.export.code_training import CodeConfig
from parm.export.collage import CollageDecoder, CollageEncoder
from parm.export.data import Dataset
from parm.export.degraded import degraded_accuracy
from parm.export.models import MultiHead, TileHeads
from parm.export.train import TrainConfig, train_parity

IMAGE = (1, 8, 8)


def test_k3_tiles_three_quadrants_and_leaves_the_fourth_empty() -> None:
    queries = torch.rand(3, 5, *IMAGE)
    tiled = CollageEncoder(3, IMAGE)(queries)[0]
    pooled = nn.functional.avg_pool2d(queries.flatten(0, 1), 2).reshape(3, 5, 1, 4, 4)
    for slot, (row, col) in enumerate([(0, 0), (0, 4), (4, 0)]):
        torch.testing.assert_close(tiled[:, :, row : row + 4, col : col + 4], pooled[slot])
    assert torch.count_nonzero(tiled[:, :, 4:, 4:]) == 0


@pytest.mark.parametrize("k", [2, 3, 4])
def test_flat_queries_tile_as_the_images_they_are(k: int) -> None:
    images = torch.rand(k, 4, *IMAGE)
    as_images = CollageEncoder(k, IMAGE)(images)
    flat = CollageEncoder(k, (64,), image_shape=IMAGE)(images.flatten(2))
    assert flat.shape == (1, 4, 64)
    torch.testing.assert_close(flat, as_images.flatten(2))


def test_flat_queries_without_an_image_shape_are_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="--image-shape"):
        CollageEncoder(2, (64,))
    with pytest.raises(ConfigError, match="does not hold them"):
        CollageEncoder(2, (64,), image_shape=(1, 28, 28))


def test_the_decoder_answers_an_erased_member_with_its_own_head_and_passes_the_rest_through() -> None:
    k = 3
    outputs = torch.randn(k, 2, 10)
    heads = torch.randn(1, 2, k, 10)
    for slot in range(k):
        available = torch.ones(k + 1)
        available[slot] = 0.0
        garbage = outputs.clone()
        garbage[slot] = float("nan")
        decoded = CollageDecoder(k)(heads, garbage, available)
        torch.testing.assert_close(decoded[slot], heads[0, :, slot])
        others = [i for i in range(k) if i != slot]
        torch.testing.assert_close(decoded[others], outputs[others])


def test_parity_answers_one_head_per_member_and_targets_are_the_members_answers() -> None:
    code = get_code("collage")
    assert code.parity_output_shape(CodeShape(4, 1, IMAGE, (10,))) == (4, 10)
    members = torch.randn(4, 6, 10)
    targets = CollageEncoder(4, IMAGE).parity_targets(members)
    assert targets.shape == (1, 6, 4, 10)
    torch.testing.assert_close(targets[0, :, 2], members[2])
    net = MultiHead(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), (4, 10))
    assert net(torch.rand(6, *IMAGE)).shape == (6, 4, 10)


def test_kl_is_for_per_member_heads_only() -> None:
    assert CodeConfig.parse("collage:2@kl").training().loss == "kl"
    with pytest.raises(ConfigError, match="KL loss"):
        CodeConfig.parse("sum:2@kl")


@pytest.mark.parametrize("k", [2, 3, 4])
def test_a_parity_model_learns_an_f_that_survives_the_tiling(k: int) -> None:
    """F reads only the pooled image the tiling keeps (avg-pool to the tile's size, then linear): a collage parity
    model can answer every member exactly, so near-perfect agreement proves each head is wired to its own slot."""
    torch.manual_seed(k)
    pool = (1, 2) if k == 2 else (2, 2)
    f = nn.Sequential(nn.AvgPool2d(pool), nn.Flatten(), nn.Linear(64 // (pool[0] * pool[1]), 10, bias=False)).eval()
    for parameter in f.parameters():
        parameter.requires_grad_(False)
    x = torch.randn(3000, *IMAGE)  # zero-mean queries: no class wins on the mean pixel alone
    train, val = Dataset(x[:2400].numpy()), Dataset(x[2400:].numpy())
    encoder, decoder = CollageEncoder(k, IMAGE), CollageDecoder(k)
    parity = MultiHead(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (k, 10))
    cfg = TrainConfig(epochs=20, batch_size=64, lr=3e-2, groups_per_epoch=3200)
    train_parity(parity, f, train, val, cfg, k, encoder, decoder)
    report = degraded_accuracy(f, parity, val, k, encoder, decoder)
    assert report.degraded_agreement_with_f > 0.93  # a linear fit by a few hundred Adam steps: near ties differ
    shifted = nn.Sequential(parity, _RollHeads())  # every head answering for its neighbour's tile instead
    assert degraded_accuracy(f, shifted, val, k, encoder, decoder).degraded_agreement_with_f < 0.4


class _RollHeads(nn.Module):
    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        return heads.roll(1, dims=1)


class _PooledCnn(nn.Module):
    """A trunk of 1x1 convolutions (each output cell sees only its own pixel) and a global-average-pool head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, kernel_size=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_tile_heads_read_their_own_tile_only(k: int) -> None:
    """Changing member i's tile of the collage changes head i's answer and no other head's."""
    torch.manual_seed(0)
    heads = TileHeads(_PooledCnn(), IMAGE, (1, 2) if k == 2 else (2, 2), (k, 10)).eval()
    encoder = CollageEncoder(k, IMAGE)
    members = torch.rand(k, 3, *IMAGE)
    with torch.no_grad():
        before = heads(encoder(members)[0])
        for slot in range(k):
            changed = members.clone()
            changed[slot] = torch.rand(3, *IMAGE)
            after = heads(encoder(changed)[0])
            moved = (after - before).abs().amax(dim=(0, 2))
            assert moved[slot] > 1e-3
            assert torch.all(moved[[i for i in range(k) if i != slot]] < 1e-6)
