"""Names shared by the orchestrator and the exporter: the one place that spells tensor names of the code networks.

Every code network is served as its own Triton model (``max_batch_size: 0``, explicit leading dims), so the same
repository runs on a stock GPU Triton and on the embedded CPU server. Shapes (``*q`` is one query's shape, ``*o``
one answer's shape, ``B`` the batch size of each member request, ``k`` members, ``r`` parities per group):

- encoder:  ``ENCODER_INPUT`` [k, B, *q]  ->  ``ENCODER_OUTPUT`` [r, B, *q]
- parity model(s): F's own input and output names, F's query shape, and answers of shape ``*p``: F's own ``*o``
  (ParM: same signature as F), or the code's own (the collage: [k, *o], one head per member)
- decoder:  ``DECODER_PARITY_INPUT`` [r, B, *p], ``DECODER_OUTPUTS_INPUT`` [k, B, *o] (missing rows of either hold
            any value), ``DECODER_AVAILABLE_INPUT`` [k + r] (the k members, then the r parities: 1.0 = arrived,
            0.0 = missing)
            ->  ``DECODER_OUTPUT`` [k, B, *o]: the members' outputs with erased slots filled in, from whichever
            parities arrived (the decoder model rebuilds e erased members from any e or more parities).

The encoder is applied to each of F's inputs and the decoder to each of F's outputs, one tensor at a time.
"""

ENCODER_INPUT = "queries"
ENCODER_OUTPUT = "parity_queries"

DECODER_PARITY_INPUT = "parity_outputs"
DECODER_OUTPUTS_INPUT = "outputs"
DECODER_AVAILABLE_INPUT = "available"
DECODER_OUTPUT = "decoded"

RECONSTRUCTED_OUTPUT = "parm_reconstructed"
"""Extra BOOL output of the coded endpoint, shape [1] per query: True where the answer was rebuilt by the decoder."""

CODED_SUFFIX = "_coded"
PARITY_SUFFIX = "_parity"
ENCODER_SUFFIX = "_encoder"
DECODER_SUFFIX = "_decoder"

GRPC_KEEPALIVE_TIME_MS = 10_000
"""How often the gateway's gRPC client pings an idle worker connection, so a silently dead peer (a stopped server, a
cut link) is noticed without waiting for a call. Workers must accept pings this often (``parm.security``)."""
GRPC_KEEPALIVE_TIMEOUT_MS = 5_000
"""How long a keepalive ping may go unanswered before the connection is declared dead."""
