"""The cluster benchmark's relay (``<F>_relay/1/model.py`` on the gateway): each request goes to an F worker over
gRPC and the worker's answer comes back, with nothing else in between.

It is the yardstick for the gateway's own cost: any orchestrator in a gateway pays at least this path (the request
into a stub process, a hand-off to an asyncio loop, a gRPC call to a worker and back, the response sent from another
thread), which is the same plumbing as the coded endpoint's adapter (``triton_model.py``) with no coding at all. The
worker is the one with the fewest calls outstanding, as the coded endpoint's placement picks among healthy workers.
"""

import asyncio
import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import np_to_triton_dtype

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        self._f_model = parameters["f_model"]
        self._outputs = [output["name"] for output in config["output"]]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        addresses = [address.strip() for address in parameters["f_workers"].split(",") if address.strip()]
        self._outstanding = dict.fromkeys(addresses, 0)
        self._clients = asyncio.run_coroutine_threadsafe(self._connect(addresses), self._loop).result(30)

    async def _connect(self, addresses):
        return {address: grpcaio.InferenceServerClient(address) for address in addresses}

    def execute(self, requests):
        for request in requests:
            inputs = {tensor.name(): tensor.as_numpy().copy() for tensor in request.inputs()}
            asyncio.run_coroutine_threadsafe(self._relay(inputs, request.get_response_sender()), self._loop)
        return None

    async def _relay(self, inputs, sender):
        address = min(self._outstanding, key=self._outstanding.get)
        self._outstanding[address] += 1
        try:
            tensors = []
            for name, array in inputs.items():
                tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            wanted = [grpcclient.InferRequestedOutput(name) for name in self._outputs]
            result = await self._clients[address].infer(self._f_model, tensors, outputs=wanted)
            outputs = [pb_utils.Tensor(name, np.ascontiguousarray(result.as_numpy(name))) for name in self._outputs]
            response = pb_utils.InferenceResponse(output_tensors=outputs)
        except Exception as error:
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"relay to {address} failed: {error}"))
        finally:
            self._outstanding[address] -= 1
        await self._loop.run_in_executor(None, sender.send, response, _FINAL)

    def finalize(self):
        async def close():
            for client in self._clients.values():
                await client.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
