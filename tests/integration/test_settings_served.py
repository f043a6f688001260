"""A real server reads back every setting a deployment writes: settings -> config.pbtxt -> Triton's parsed config
(``GET /v2/models/<name>/config``) -> settings is the identity, for a few drawn settings."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import tritonclient.http as httpclient
from google.protobuf import text_format
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from parm.backend.orchestrator import OrchestratorConfig, OrchestratorSettings
from parm.export.repository import install_orchestrator, model_configs
from tests.unit.test_model_repository import DEPLOYMENT
from tests.unit.test_orchestrator_settings import LOCAL_ADDRESS, settings

pytestmark = pytest.mark.integration

EXAMPLES = 3


def _servable(chosen: OrchestratorSettings) -> OrchestratorSettings:
    """``chosen`` with periods long enough that an orchestrator probing unreachable workers stays idle."""
    return dataclasses.replace(
        chosen,
        worker_probe_ms=max(chosen.worker_probe_ms, 100.0),
        worker_resolve_ms=max(chosen.worker_resolve_ms, 100.0),
        bls_threads=min(chosen.bls_threads, 256),
        max_parity_in_flight=min(chosen.max_parity_in_flight, 128),
    )


@hypothesis_settings(
    max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(st.lists(settings(LOCAL_ADDRESS).map(_servable), min_size=EXAMPLES, max_size=EXAMPLES))
def test_triton_parses_every_written_setting_back(tmp_path_factory, start_server, drawn):
    repository = tmp_path_factory.mktemp("settings-repo")
    expected: dict[str, OrchestratorConfig] = {}
    for i, chosen in enumerate(drawn):
        deployment = dataclasses.replace(DEPLOYMENT, settings=chosen)
        config = model_configs(deployment)[deployment.names.coded]
        config.name = f"{deployment.names.coded}_{i}"
        (repository / config.name / "1").mkdir(parents=True)
        (repository / config.name / "config.pbtxt").write_text(text_format.MessageToString(config))
        install_orchestrator(repository / config.name / "1")
        expected[config.name] = deployment.orchestrator_config()
    server = start_server(repository)
    client = httpclient.InferenceServerClient(server.http_address)
    try:
        for name, config in expected.items():
            served = client.get_model_config(name)
            assert OrchestratorConfig.from_model_config(served) == config, name
    finally:
        client.close()
    shutil.rmtree(repository, ignore_errors=True)
