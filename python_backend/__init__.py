"""Code that runs inside Triton: the coded-inference orchestrator and the Python-based onnxruntime backend."""
