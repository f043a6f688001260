"""Export torch modules to self-contained ONNX files and TorchScript, and check the exports against eager torch.

Triton loads ``model.onnx`` on its own, so an ONNX file must carry its weights inside (no ``.data`` side file). The
legacy TorchScript-based exporter (``dynamo=False``) writes weights inline and keeps ``dynamic_axes`` as named
symbolic dims; the check after export enforces the no-side-file rule whatever the exporter did.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.external_data_helper import uses_external_data
from torch import nn

from .errors import ExportError, ExportMismatchError

ONNX_OPSET = 17
"""Opset supported by the onnxruntime in every Triton release this project targets."""


def _as_tuple(outputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)


def _check_self_contained(path: Path) -> None:
    model = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in model.graph.initializer if uses_external_data(t)]
    if external:
        raise ExportError(f"{path}: ONNX export stored tensors {external[:5]} in external data; it must be one file")


def export_onnx(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    path: Path,
) -> Path:
    """Write ``module`` (in eval mode) to one self-contained ONNX file at ``path`` and check it is one file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    before = set(path.parent.iterdir())
    module.eval()
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (inline weights, named dynamic axes): its deprecation notice is
        # noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    side_files = sorted(p.name for p in set(path.parent.iterdir()) - before - {path})
    if side_files:
        raise ExportError(f"{path}: ONNX export wrote side files {side_files}; the model must be one file")
    _check_self_contained(path)
    onnx.checker.check_model(str(path))
    return path


def export_torchscript(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Trace ``module`` (in eval mode) on ``example_inputs`` and save it as a TorchScript file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with warnings.catch_warnings():
        # TorchScript is what Triton's PyTorch backend loads; torch's notice that tracing is deprecated is noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example_inputs)
    traced.save(str(path))
    return path


def _compare(
    name: str, what: str, expected: tuple[torch.Tensor, ...], got: Sequence[np.ndarray], atol: float, shapes: str
) -> None:
    if len(got) != len(expected):
        raise ExportMismatchError(f"{name}: {what} returned {len(got)} outputs, torch returned {len(expected)}")
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        want_np = want.detach().numpy()
        if want_np.shape != have.shape:
            raise ExportMismatchError(
                f"{name}: {what} output {i} has shape {have.shape}, torch gives {want_np.shape} (inputs {shapes})"
            )
        error = float(np.max(np.abs(want_np - have), initial=0.0))
        if not np.allclose(want_np, have, atol=atol, rtol=0.0, equal_nan=True):
            raise ExportMismatchError(
                f"{name}: {what} output {i} differs from torch by up to {error:.3g} (atol {atol}) on inputs {shapes}"
            )


def _shapes(inputs: tuple[torch.Tensor, ...]) -> str:
    return ", ".join(str(list(t.shape)) for t in inputs)


def verify_onnx(
    path: Path, module: nn.Module, fresh_inputs: Sequence[tuple[torch.Tensor, ...]], atol: float = 1e-4
) -> None:
    """Run the ONNX file with onnxruntime on each input tuple and compare with eager ``module``.

    Pass inputs that differ from the export example (other batch sizes, other k) to prove the dynamic axes work.
    """
    path = Path(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    module.eval()
    for inputs in fresh_inputs:
        if len(inputs) != len(names):
            raise ExportMismatchError(f"{path.name}: the ONNX model takes inputs {names}, got {len(inputs)} tensors")
        with torch.no_grad():
            expected = _as_tuple(module(*inputs))
        try:
            got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
        except Exception as err:  # onnxruntime raises its own untyped errors, e.g. on a fixed axis
            raise ExportMismatchError(f"{path.name}: onnxruntime failed on inputs {_shapes(inputs)}: {err}") from err
        _compare(path.name, "onnxruntime", expected, got, atol, _shapes(inputs))


def verify_torchscript(
    path: Path, module: nn.Module, fresh_inputs: Sequence[tuple[torch.Tensor, ...]], atol: float = 1e-5
) -> None:
    """Load the TorchScript file and compare it with eager ``module`` on each input tuple."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # as in export_torchscript: Triton still loads TorchScript
        loaded = torch.jit.load(str(path))
    module.eval()
    for inputs in fresh_inputs:
        with torch.no_grad():
            expected = _as_tuple(module(*inputs))
            try:
                got = _as_tuple(loaded(*inputs))
            except Exception as err:  # TorchScript raises runtime errors of several types
                raise ExportMismatchError(
                    f"{path.name}: TorchScript failed on inputs {_shapes(inputs)}: {err}"
                ) from err
        _compare(path.name, "TorchScript", expected, [t.numpy() for t in got], atol, _shapes(inputs))
