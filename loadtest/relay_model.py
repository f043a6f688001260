"""The benchmark's relay (``deep_relay/1/model.py``): each request goes to F over BLS and F's response comes back,
with nothing else in between.

It is the yardstick for the coded endpoint's overhead. Any orchestrator inside Triton's Python backend pays at least
this crossing (the request into a stub process, a BLS call out to F and back, the response out), whatever it does
besides; the benchmark reports the relay's p50 over F direct (the floor) next to the coded endpoint's over the relay
(what the orchestrator itself adds).
"""

import json

import triton_python_backend_utils as pb_utils

F_MODEL_PARAMETER = "f_model"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self._f_model = config["parameters"][F_MODEL_PARAMETER]["string_value"]
        self._outputs = [output["name"] for output in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            reply = pb_utils.InferenceRequest(
                model_name=self._f_model, inputs=request.inputs(), requested_output_names=self._outputs
            ).exec()
            if reply.has_error():
                responses.append(pb_utils.InferenceResponse(error=reply.error()))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=reply.output_tensors()))
        return responses
