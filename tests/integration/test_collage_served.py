"""The collage code served end to end, with a parity model exact by construction, so rebuilt answers are checked
exactly.

F pools the image as the collage's tiling does (k = 2: over column pairs; k = 3: 2x2) and applies a bias-free linear
map. Each tile of the collage's parity query is then one member pooled as F pools it, so a parity model whose head i
applies F's linear map to tile i (built by hand, not trained) answers F's own answer to every member: its [k, 10]
answers travel through the parity model's config, the orchestrator and the decoder, and a paused F instance's
requests come back rebuilt, flagged and equal to F's answers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from torch import nn

from parm.backend.orchestrator import TensorSpec
from parm.backend.orchestrator.contract import CODED_SUFFIX, RECONSTRUCTED_OUTPUT
from parm.backend.orchestrator.metrics import FLUSH_PERIOD_S
from parm.export.code_training import CodeConfig, TrainedCode, build_code, export_code
from parm.export.evaluate import evaluate_repository
from parm.export.fsource import torch_f
from parm.export.repository import CodedDeployment, write_repository
from parm.loadtest import faults
from parm.loadtest.prometheus import metric_sum, scrape

from .pausing import answers_while_paused, check_f_answers_when_nothing_is_slow

pytestmark = pytest.mark.integration

SIDE = 8
CLASSES = 10
KS = (2, 3)


class TileHeads(nn.Module):
    """An exact collage parity model of an F that pools, then applies ``linear``: head i is ``linear`` on tile i of
    the tiled query (k = 2: the halves side by side; 3 and 4: the quadrants in reading order); [B, k, classes]."""

    def __init__(self, linear: nn.Linear, k: int) -> None:
        super().__init__()
        self.linear = linear
        self.height, self.width = (SIDE, SIDE // 2) if k == 2 else (SIDE // 2, SIDE // 2)
        self.corners = [(0, 0), (0, self.width), (self.height, 0), (self.height, self.width)][:k]

    def forward(self, tiled: torch.Tensor) -> torch.Tensor:
        tiles = [tiled[:, :, r : r + self.height, c : c + self.width] for r, c in self.corners]
        return torch.stack([self.linear(tile.flatten(1)) for tile in tiles], dim=1)


def pooled_linear_f(k: int) -> nn.Module:
    """F for a collage of k: the collage's own pooling, then a bias-free linear map."""
    pool = (1, 2) if k == 2 else (2, 2)
    pixels = SIDE * SIDE // (pool[0] * pool[1])
    return nn.Sequential(nn.AvgPool2d(pool), nn.Flatten(), nn.Linear(pixels, CLASSES, bias=False)).eval()


def name_of(k: int) -> str:
    return f"collage{k}"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("collage-served")
    torch.manual_seed(0)
    repo = root / "repo"
    for k in KS:
        module = pooled_linear_f(k)
        f = torch_f(
            module,
            TensorSpec("input", np.dtype(np.float32), (1, SIDE, SIDE)),
            TensorSpec("logits", np.dtype(np.float32), (CLASSES,)),
            "a pooled bias-free linear F",
        )
        code = CodeConfig("collage", k)
        encoder, decoder = build_code(code, f)
        trained = TrainedCode(code, encoder, decoder, parity_models=[TileHeads(module[-1], k).eval()])
        exported = export_code(trained, f, root / name_of(k))
        deployment = CodedDeployment(name_of(k), (f.input,), (f.output,), max_batch_size=8, k=k, code="collage")
        write_repository(repo, deployment, exported.onnx)
    return repo


@pytest.fixture(scope="module")
def server(start_session_server, repository):
    return start_session_server(repository)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(0).random((24, 1, 1, SIDE, SIDE), dtype=np.float32)


class CodedTally:
    """What the coded endpoints answered this module's requests, per endpoint: the endpoint's own counts must match."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: Counter[str] = Counter()
        self.rebuilt: Counter[str] = Counter()

    def add(self, coded: str, result) -> None:
        with self._lock:
            self.sent[coded] += 1
            self.rebuilt[coded] += bool(result.as_numpy(RECONSTRUCTED_OUTPUT).any())


TALLY = CodedTally()


def _infer(client, model: str, x: np.ndarray, timeout_s: float = 20):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], client_timeout=timeout_s)
    if model.endswith(CODED_SUFFIX):
        TALLY.add(model, result)
    return result


def test_the_parity_model_answers_one_head_per_member(server, queries):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for k in KS:
        heads = _infer(client, f"{name_of(k)}_parity", queries[0]).as_numpy("logits")
        assert heads.shape == (1, k, CLASSES)


@pytest.mark.parametrize("k", KS)
def test_answers_are_f_answers_when_nothing_is_slow(server, queries, k):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    name = name_of(k)
    check_f_answers_when_nothing_is_slow(
        lambda x: _infer(client, f"{name}_coded", x),
        lambda x: _infer(client, name, x).as_numpy("logits"),
        queries[:6],
        atol=1e-5,
    )


@pytest.mark.parametrize("k", KS)
def test_a_paused_f_instance_is_rebuilt_around_by_the_collage_heads_exactly(server, queries, k):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    name, coded = name_of(k), f"{name_of(k)}_coded"
    for model in (name, f"{name}_parity", coded):  # first calls' set-up must not eat into the pause
        _infer(client, model, queries[0])
    pid = faults.find_instance_pids(server.pid, name)[f"{name}_0_0"]
    results, flags = answers_while_paused([pid], lambda x: _infer(client, coded, x), queries)
    assert any(flags), "the paused instance held a request: it must have been rebuilt and flagged"
    for result, x in zip(results, queries, strict=True):
        np.testing.assert_allclose(result.as_numpy("logits"), _infer(client, name, x).as_numpy("logits"), atol=1e-5)
    for x in queries[:4]:  # service is normal after the resume
        np.testing.assert_allclose(
            _infer(client, coded, x).as_numpy("logits"), _infer(client, name, x).as_numpy("logits"), atol=1e-5
        )
    _assert_answered_once(server.metrics_url, coded)


def _assert_answered_once(url: str, coded: str) -> None:
    """The endpoint counted one answer per request this module sent it, rebuilt exactly for those flagged to the
    client. Metrics are flushed every ``FLUSH_PERIOD_S``: polled until a flush after the last request."""

    def count(samples, metric: str, **labels: str) -> float:
        return metric_sum(samples, metric, model=coded, **labels)

    sent = TALLY.sent[coded]
    deadline = time.monotonic() + 5 * FLUSH_PERIOD_S
    samples = scrape(url)
    while count(samples, "parm_answers_total") < sent and time.monotonic() < deadline:
        time.sleep(0.2)
        samples = scrape(url)
    assert count(samples, "parm_requests_total") == sent
    answers = {source: count(samples, "parm_answers_total", source=source) for source in ("original", "rebuilt")}
    assert answers == {"original": sent - TALLY.rebuilt[coded], "rebuilt": TALLY.rebuilt[coded]}
    assert count(samples, "parm_answers_total", source="error") == 0


def test_parm_eval_runs_a_collage_repository_and_its_exact_heads_agree_with_f(repository):
    report = evaluate_repository(repository)
    rows = {row.name: row for row in report.rows}
    assert sorted(rows) == sorted(f"{name_of(k)}_coded" for k in KS)
    for k in KS:
        assert rows[f"{name_of(k)}_coded"].k == k
        assert rows[f"{name_of(k)}_coded"].agreement_with_f == pytest.approx(1.0)
