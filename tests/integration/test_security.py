"""Every server the project starts refuses the APIs nobody outside should call, unless a call carries the admin key;
inference stays open. Checked on a real server, over HTTP and gRPC."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from parm.security import ADMIN_KEY_HEADER, admin_headers
from parm.server import TritonServer

from .conftest import LINEAR_IN

pytestmark = pytest.mark.integration

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_status(server: TritonServer, path: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"{server.http_url}{path}", data=b"{}", headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize(
    "path", ["/v2/repository/index", "/v2/logging", "/v2/systemsharedmemory/status", "/v2/trace/setting"]
)
def test_restricted_http_apis_need_the_admin_key(linear_server: TritonServer, path: str) -> None:
    assert _http_status(linear_server, path, {}) == 403
    assert _http_status(linear_server, path, {ADMIN_KEY_HEADER: "not-the-key"}) == 403
    if path == "/v2/repository/index":
        assert _http_status(linear_server, path, admin_headers(linear_server.admin_key)) == 200


def test_restricted_grpc_protocols_need_the_admin_key_and_inference_stays_open(linear_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(linear_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_log_settings()
        index = client.get_model_repository_index(headers=admin_headers(linear_server.admin_key, grpc=True))
        assert "lin" in {model.name for model in index.models}
        tensor = grpcclient.InferInput("x", [1, LINEAR_IN], "FP32")
        tensor.set_data_from_numpy(np.ones((1, LINEAR_IN), dtype=np.float32))
        assert client.infer("lin", [tensor]).as_numpy("y").shape == (1, 3)
        assert client.is_server_ready()
    finally:
        client.close()
