"""The sum code against the contract: exact decoding for a linear F, masking of erased slots, the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from parm.backend.orchestrator import contract
from parm.errors import ConfigError
from parm.export.code_registry import (
    CodeShape,
    ParityKind,
    SubtractionDecoder,
    SumEncoder,
    availability,
    get_code,
    register_code,
)


def _erased(k: int, slot: int) -> torch.Tensor:
    return availability(k, 1, [slot])


@pytest.mark.parametrize("k", [2, 3, 4])
def test_linear_f_is_rebuilt_exactly_for_every_single_erasure(k: int) -> None:
    torch.manual_seed(k)
    f = nn.Linear(6, 3, bias=False)  # linear: F(x1) + ... + F(xk) == F(x1 + ... + xk), so the parity model is F
    queries = torch.randn(k, 5, 6)
    with torch.no_grad():
        outputs = f(queries)
        parity_outputs = f(SumEncoder(k)(queries))
    decoder = SubtractionDecoder(k)
    for slot in range(k):
        garbage = outputs.clone()
        garbage[slot] = torch.randn(5, 3) * 1e3
        decoded = decoder(parity_outputs, garbage, _erased(k, slot))
        torch.testing.assert_close(decoded, outputs, atol=1e-5, rtol=1e-5)


def test_affine_f_with_its_parity_model() -> None:
    torch.manual_seed(0)
    k, f = 3, nn.Linear(4, 2)
    parity = nn.Linear(4, 2)  # the exact parity model of an affine F carries k times its bias
    parity.weight.data.copy_(f.weight.data)
    parity.bias.data.copy_(k * f.bias.data)
    queries = torch.randn(k, 7, 4)
    with torch.no_grad():
        outputs = f(queries)
        decoded = SubtractionDecoder(k)(parity(SumEncoder(k)(queries)), outputs, _erased(k, 1))
    torch.testing.assert_close(decoded, outputs, atol=1e-5, rtol=1e-5)


def test_shapes_follow_the_contract() -> None:
    queries = torch.rand(2, 3, 1, 8, 8)  # [k, B, *q]
    parity_queries = SumEncoder(2)(queries)
    assert parity_queries.shape == (1, 3, 1, 8, 8)  # [r, B, *q]
    torch.testing.assert_close(parity_queries[0], queries[0] + queries[1])
    assert SumEncoder.input_name == contract.ENCODER_INPUT and SumEncoder.output_name == contract.ENCODER_OUTPUT
    assert SubtractionDecoder.input_names == (
        contract.DECODER_PARITY_INPUT,
        contract.DECODER_OUTPUTS_INPUT,
        contract.DECODER_AVAILABLE_INPUT,
    )
    assert SubtractionDecoder.output_name == contract.DECODER_OUTPUT


def test_erased_slot_may_hold_nan_and_available_slots_pass_through() -> None:
    outputs = torch.tensor([[[1.0, 2.0]], [[float("nan"), float("inf")]]])  # [k=2, B=1, o=2]
    parity = torch.tensor([[[4.0, 6.0]]])
    decoded = SubtractionDecoder(2)(parity, outputs, _erased(2, 1))
    torch.testing.assert_close(decoded, torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]]))
    everything = torch.randn(2, 1, 2)
    torch.testing.assert_close(SubtractionDecoder(2)(parity, everything, torch.ones(3)), everything)


def test_registry() -> None:
    code = get_code("sum")
    shape = CodeShape(3)
    assert isinstance(code.encoder(shape), SumEncoder) and isinstance(code.decoder(shape), SubtractionDecoder)
    assert code.encoder(shape).k == 3 and code.decoder(shape).r == 1
    assert code.parity is ParityKind.TRAINED
    known = "known codes: \\['berrut', 'collage', 'concat', 'learned', 'learned-conv', 'letcc', 'linear', 'sum'"
    with pytest.raises(ConfigError, match=known):
        get_code("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_code(code)
    with pytest.raises(ConfigError, match="code 'sum' has at most r=1"):
        code.encoder(CodeShape(3, 2))
    with pytest.raises(ConfigError, match=r"code 'concat' is defined for k in \[2, 3, 4\], got k=5"):
        get_code("concat").encoder(CodeShape(5, 1, (1, 8, 8)))
    with pytest.raises(ConfigError, match="k >= 2"):
        SumEncoder(1)
