"""Turning what users hand to ``register`` into checked ONNX bytes plus the facts the registry keeps."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from dbdl_udf.adapt import Rewrite, adapt
from dbdl_udf.cost import estimate_cost
from dbdl_udf.modelcheck import check_model_bytes
from dbdl_udf.runtime import Signature, make_session, signature_of

from .errors import InvalidModel


@dataclass(frozen=True)
class PreparedModel:
    onnx_bytes: bytes
    sha256: str
    source: str  # "torch", "sklearn" or "onnx"
    signature: Signature
    n_params: int
    flops_per_row: int
    opset: int
    torch_program: bytes | None = None  # torch.export program (.pt2) when registered from torch
    original_bytes: bytes | None = None  # the ONNX bytes as given, when registration rewrote them
    rewrites: tuple[Rewrite, ...] = ()  # what registration changed (dbdl_udf.adapt)


def prepare(model: Any, example: Any = None, *, opset: int | None = None) -> PreparedModel:
    """Check ``model`` and return its ONNX bytes and metadata, or raise InvalidModel naming the fix."""
    torch_program = None
    source = "onnx"
    embedded: list = []
    if _is_torch_module(model):
        onnx_bytes, torch_program = _export_torch(model, example, opset)
        source = "torch"
    elif _is_sklearn(model):
        onnx_bytes = _convert_sklearn(model, example)
        source = "sklearn"
    elif _is_model_proto(model):
        onnx_bytes = model.SerializeToString()
    elif isinstance(model, (bytes, bytearray, memoryview)):
        onnx_bytes = bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise InvalidModel(f"no ONNX file at {str(path)!r}; pass the path of an existing .onnx file")
        onnx_bytes, embedded = _embed_external_data(path)
    else:
        raise InvalidModel(
            f"cannot register a {type(model).__name__}; pass a torch.nn.Module (with example=...), a fitted "
            "scikit-learn estimator or Pipeline (with example=X[:1]), an onnx.ModelProto, ONNX bytes or the path "
            "of a .onnx file"
        )
    if not onnx_bytes:
        raise InvalidModel("the model bytes are empty; pass the contents of a .onnx file")
    # before onnx's checker, the cost estimate (which decodes tensors) or onnxruntime see the model:
    # none of them may be led to open a file the model names
    check_model_bytes(onnx_bytes)
    _check_onnx(onnx_bytes)
    adapted = adapt(onnx_bytes, lambda data: make_session(data, threads=1))
    final = adapted.onnx_bytes
    proto = _check_onnx(final) if adapted.original is not None else _check_onnx(onnx_bytes)
    session = make_session(final, threads=1)
    signature = signature_of(session)
    n_params, flops = estimate_cost(proto)
    model_opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return PreparedModel(
        onnx_bytes=final,
        sha256=hashlib.sha256(final).hexdigest(),
        source=source,
        signature=signature,
        n_params=n_params,
        flops_per_row=flops,
        opset=model_opset,
        torch_program=torch_program,
        original_bytes=adapted.original if adapted.original is not None or not embedded else onnx_bytes,
        rewrites=tuple(embedded) + adapted.rewrites,
    )


def _embed_external_data(path: Path) -> tuple[bytes, list]:
    """The file's bytes; a model whose weights live in the file torch.onnx.export writes beside it
    (``m.onnx`` → ``m.onnx.data``, its default) gets them embedded here, in the client — the
    database never opens a file a model names. No other file is read: a model that names any other
    (a hostile one naming a secret beside it) is refused as before, since the embedded bytes would
    land in the database for every dbdl_user to read."""
    data = path.read_bytes()
    try:
        check_model_bytes(data)
        return data, []
    except InvalidModel as exc:
        if "external file" not in str(exc):
            raise
        exc_original = exc
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    folder = path.resolve().parent
    files = set()
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (folder / location).resolve()
            if location != path.name + ".data" or target.parent != folder or not target.is_file():
                raise exc_original
            files.add(location)
    onnx.load_external_data_for_model(proto, str(folder))
    embedded = proto.SerializeToString()
    from dbdl_udf.adapt import Rewrite

    return embedded, [Rewrite("external_data", f"weights read from {', '.join(sorted(files))} beside the model and "
                                               "embedded (dbdl stores one self-contained model)")]


def _is_sklearn(obj: Any) -> bool:
    """A fitted scikit-learn estimator (or Pipeline), told by duck typing: sklearn need not be imported."""
    import sys

    return "sklearn" in sys.modules and hasattr(obj, "get_params") and (hasattr(obj, "predict") or
                                                                         hasattr(obj, "transform"))


def _convert_sklearn(estimator: Any, example: Any) -> bytes:
    """skl2onnx's conversion of a fitted estimator: classifiers without ZipMap (outputs ``label``
    and ``probabilities``, both tensors), float inputs shaped like ``example``."""
    try:
        from skl2onnx import to_onnx
    except ImportError as exc:
        raise InvalidModel("registering a scikit-learn estimator needs skl2onnx (pip install skl2onnx), which converts "
                           "it to ONNX; or convert it yourself, skl2onnx.to_onnx(model, X[:1]), and register the "
                           "ONNX model") from exc
    import numpy as np

    if example is None:
        raise InvalidModel("a scikit-learn model needs an example input to be converted; pass example=X[:1] (one row "
                           "of the training features, as a numpy array)")
    x = np.asarray(example)
    if x.dtype.kind not in "fiub":
        raise InvalidModel(f"example has dtype {x.dtype}; pass numeric features (e.g. X[:1].astype('float32'))")
    x = x.astype(np.float64 if x.dtype == np.float64 else np.float32).reshape(len(x) if x.ndim > 1 else 1, -1)
    options = {"zipmap": False} if hasattr(estimator, "predict_proba") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = to_onnx(estimator, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    except Exception as exc:
        raise InvalidModel(f"skl2onnx cannot convert the {type(estimator).__name__} ({exc.__class__.__name__}: "
                           f"{str(exc).strip()[:300]}); check that it is fitted and that skl2onnx supports it "
                           "(https://onnx.ai/sklearn-onnx/supported.html), or convert it yourself and register the "
                           "ONNX model") from exc
    return model.SerializeToString()


def _is_torch_module(obj: Any) -> bool:
    torch = _maybe_torch()
    return torch is not None and isinstance(obj, torch.nn.Module)


def _is_model_proto(obj: Any) -> bool:
    return type(obj).__name__ == "ModelProto" and hasattr(obj, "SerializeToString")


def _maybe_torch():
    import sys

    return sys.modules.get("torch")


def _check_onnx(onnx_bytes: bytes):
    import onnx

    if not onnx_bytes:
        raise InvalidModel("the model bytes are empty; pass the contents of a .onnx file")
    try:
        proto = onnx.load_from_string(onnx_bytes)
    except Exception as exc:
        raise InvalidModel(
            f"the bytes are not an ONNX model ({exc.__class__.__name__}); pass the contents of a .onnx file, "
            "e.g. open(path, 'rb').read()"
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise InvalidModel("the bytes decode to an empty ONNX graph; pass the contents of a real .onnx file")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise InvalidModel(f"the ONNX checker rejects the model: {str(exc).strip()[:400]}; fix what it names and "
                           "re-export (onnx.checker.check_model(onnx.load(path), full_check=True) shows the same), "
                           "e.g. torch.onnx.export(model, example, path) or skl2onnx.to_onnx(model, X[:1])") from exc
    return proto


def _export_torch(module, example, opset: int | None) -> tuple[bytes, bytes | None]:
    import torch

    if example is None:
        raise InvalidModel(
            "a torch model needs an example input to be exported; pass example=torch.randn(1, n_features) "
            "(a tensor, or a tuple of tensors for several inputs)"
        )
    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not all(isinstance(a, torch.Tensor) and a.dim() >= 1 for a in args):
        raise InvalidModel("example must be a tensor (or tuple of tensors) with a leading batch axis, e.g. "
                           "example=torch.randn(1, n_features)")
    # torch.export specialises a batch axis of size 1, so export with two rows
    args = tuple(a.expand(2, *a.shape[1:]).contiguous() if a.shape[0] == 1 else a for a in args)
    names = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            sample = module(*args)
        outputs = ["output"] if isinstance(sample, torch.Tensor) else [f"output_{i}" for i in range(len(sample))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _export_dynamo(module, args, names, outputs, opset)
    except InvalidModel:
        raise
    except Exception as first:
        # torch.export refuses data-dependent Python control flow; the TorchScript exporter traces it.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                buf = io.BytesIO()
                torch.onnx.export(
                    module, args, buf, dynamo=False, input_names=names, output_names=outputs,
                    dynamic_axes={n: {0: "batch"} for n in names + outputs}, opset_version=opset or 17,
                )
            return buf.getvalue(), None
        except Exception as second:
            raise InvalidModel(
                f"torch could not export the model to ONNX ({first.__class__.__name__}: {str(first)[:200]}; "
                f"then {second.__class__.__name__}: {str(second)[:200]}); export it yourself with "
                "torch.onnx.export and register the .onnx file"
            ) from second
    finally:
        module.train(was_training)


def _export_dynamo(module, args, names, outputs, opset):
    import logging

    import torch

    batch = torch.export.Dim("batch", min=1)
    shapes = tuple({0: batch} for _ in args)
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    program = torch.export.export(module, args, dynamic_shapes=shapes)
    saved = io.BytesIO()
    torch.export.save(program, saved)
    onnx_program = torch.onnx.export(
        program, args, dynamo=True, input_names=names, output_names=outputs, opset_version=opset, verbose=False,
        optimize=True,
    )
    return onnx_program.model_proto.SerializeToString(), saved.getvalue()


def load_torch_program(data: bytes):
    """The torch module stored at registration (a torch.export program), ready to call."""
    import torch

    return torch.export.load(io.BytesIO(data)).module()
