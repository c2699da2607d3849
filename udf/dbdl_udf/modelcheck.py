"""What a model may ask of onnxruntime: nothing outside its own bytes.

onnxruntime opens files for tensors whose data is "external" (``data_location = EXTERNAL``, a
``location`` relative to the model's directory — for a model given as bytes, the process's
working directory: a PostgreSQL server's data directory) and needs libraries for operators of
domains it does not implement itself. A model is a user's input, so before any onnxruntime
session is built — at registration and again when stored bytes are loaded — :func:`check_model_bytes`
walks every tensor and every node the model holds and refuses those.

The walk reads the protobuf wire format directly, with the few ONNX message layouts it needs
written out below: the server's Python need not have the ``onnx`` package, there is one
implementation for client and server, and no tensor data is copied or decoded. The layouts were
taken from onnx.proto (tests/test_model_safety.py compares them with onnx's own descriptors, so a
new field that can hold a tensor, graph or node cannot slip past).
"""

from __future__ import annotations

from .errors import InvalidModel

__all__ = ["ALLOWED_DOMAINS", "check_model_bytes", "LAYOUTS"]

#: operator domains onnxruntime's CPU provider implements with its own kernels (no library to load):
#: the ONNX standard ('' and its alias 'ai.onnx'), ONNX-ML, and Microsoft's contrib operators.
#: ('com.microsoft.nchwc' has CPU kernels too, but only onnxruntime's own optimizer emits it.)
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})

#: message -> {field number: message it holds}: every path from ModelProto to a TensorProto,
#: GraphProto, NodeProto or FunctionProto. Other fields (types, shapes, docs) cannot hold tensors.
LAYOUTS: dict[str, dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 8: "OperatorSetIdProto", 14: "StringStringEntryProto",
                   20: "TrainingInfoProto", 25: "FunctionProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "NodeProto": {5: "AttributeProto"},
    "AttributeProto": {5: "TensorProto", 6: "GraphProto", 10: "TensorProto", 11: "GraphProto",
                       22: "SparseTensorProto", 23: "SparseTensorProto"},
    "SparseTensorProto": {1: "TensorProto", 2: "TensorProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "FunctionProto": {7: "NodeProto", 9: "OperatorSetIdProto", 11: "AttributeProto"},
    "TensorProto": {13: "StringStringEntryProto"},
    "OperatorSetIdProto": {},
    "StringStringEntryProto": {},
}

# scalar (length-delimited text / varint) fields the checks read
_NAME = {"GraphProto": 2, "NodeProto": 3, "AttributeProto": 1, "TensorProto": 8, "FunctionProto": 1}
_NODE_OP, _NODE_DOMAIN = 4, 7
_FUNCTION_DOMAIN = 10
_OPSET_DOMAIN = 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_TENSOR_LOCATION = 14
_EXTERNAL = 1
_MAX_DEPTH = 200  # nested messages; real models nest subgraphs a few levels deep

_EMBED = ("embed the weights in the model: load it with its data file beside it and save it whole, "
          "onnx.save(onnx.load('model.onnx'), 'embedded.onnx', save_as_external_data=False), then register "
          "embedded.onnx (torch: torch.onnx.export(..., external_data=False))")


def _malformed(why: str) -> InvalidModel:
    return InvalidModel(f"the bytes are not an ONNX model ({why}); pass the contents of a .onnx file, "
                        "e.g. open(path, 'rb').read()")


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _malformed("a truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited field) of one message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1:
            pos += 8
            yield number, wire, None
        elif wire == 5:
            pos += 4
            yield number, wire, None
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _malformed("a field longer than its message")
            yield number, wire, (pos, pos + length)
            pos += length
        else:  # groups (3, 4) are not used by onnx.proto; 6, 7 do not exist
            raise _malformed(f"wire type {wire}")
    if pos != end:
        raise _malformed("a field past the end of its message")


def _text(buf: memoryview, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def check_model_bytes(data: bytes, what: str = "the model") -> None:
    """Raise InvalidModel if ``data`` would make onnxruntime open a file or load a library: a tensor
    with external data anywhere (graphs, subgraphs of If/Loop/Scan, node attributes, sparse
    tensors, function bodies, training graphs), an operator or opset of a domain outside
    ALLOWED_DOMAINS (model-local functions excepted), or an ``ort_config`` metadata entry."""
    buf = memoryview(bytes(data) if not isinstance(data, bytes) else data)
    if not len(buf):
        raise InvalidModel("the model bytes are empty; pass the contents of a .onnx file")
    nodes: list[tuple[str, str, str]] = []  # (domain, op_type, where)
    opsets: list[tuple[str, str]] = []  # (domain, where)
    functions: set[tuple[str, str]] = set()
    function_domains: set[str] = set()
    # explicit stack: a hostile model nests thousands of levels deep without a RecursionError
    stack: list[tuple[str, int, int, str, int]] = [("ModelProto", 0, len(buf), what, 0)]
    while stack:
        kind, start, end, where, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise InvalidModel(f"{what} nests graphs more than {_MAX_DEPTH} levels deep; dbdl refuses it")
        layout = LAYOUTS[kind]
        texts: dict[int, str] = {}
        ints: dict[int, int] = {}
        children: list[tuple[str, int, int]] = []
        for number, wire, value in _fields(buf, start, end):
            if wire == 2 and number in layout:
                children.append((layout[number], *value))
            elif wire == 2:
                if (kind, number) in _TEXT_FIELDS:
                    texts[number] = _text(buf, value)
            elif wire == 0:
                ints[number] = value
        name = texts.get(_NAME.get(kind, -1))
        here = f"{where} > {kind[:-5].lower()} {name!r}" if name else where
        if kind == "TensorProto":
            location = None
            for child, a, b in children:
                if child == "StringStringEntryProto":
                    entry = {n: _text(buf, v) for n, w, v in _fields(buf, a, b) if w == 2}
                    if entry.get(_ENTRY_KEY) == "location":
                        location = entry.get(_ENTRY_VALUE)
                    location = location or "?"
            if ints.get(_TENSOR_LOCATION) == _EXTERNAL or location is not None:
                raise InvalidModel(
                    f"{here} keeps its data in an external file ({location or 'no location'!r}); a model "
                    f"registered with dbdl must not make the database open files — {_EMBED}")
            continue
        if kind == "NodeProto":
            nodes.append((texts.get(_NODE_DOMAIN, ""), texts.get(_NODE_OP, "?"), here))
        elif kind == "FunctionProto":
            domain = texts.get(_FUNCTION_DOMAIN, "")
            functions.add((domain, name or ""))
            function_domains.add(domain)
        elif kind == "OperatorSetIdProto":
            opsets.append((texts.get(_OPSET_DOMAIN, ""), where))
        elif kind == "StringStringEntryProto" and texts.get(_ENTRY_KEY) == "ort_config":
            raise InvalidModel(f"{what} carries an 'ort_config' metadata entry, which can change how onnxruntime "
                               "runs (profiling files, threads); remove it from model.metadata_props")
        for child, a, b in reversed(children):
            stack.append((child, a, b, here, depth + 1))
    for domain, op, where in nodes:
        if domain not in ALLOWED_DOMAINS and (domain, op) not in functions:
            raise InvalidModel(
                f"{where} is operator {op!r} of domain {domain!r}, which onnxruntime's CPU provider does not "
                f"implement itself (it would need a custom-operator library, and dbdl never loads one); use "
                f"operators of the domains {_allowed()} — re-export the model without custom operators")
    for domain, where in opsets:
        if domain not in ALLOWED_DOMAINS and domain not in function_domains:
            raise InvalidModel(
                f"{where} imports the operator set of domain {domain!r}, which onnxruntime's CPU provider does "
                f"not implement itself; use operators of the domains {_allowed()} — re-export the model "
                "without custom operators")


def _allowed() -> str:
    return ", ".join(repr(d) for d in sorted(ALLOWED_DOMAINS))


# length-delimited text fields read by the checks: (message, field number)
_TEXT_FIELDS = {
    ("GraphProto", 2), ("NodeProto", 3), ("NodeProto", _NODE_OP), ("NodeProto", _NODE_DOMAIN),
    ("AttributeProto", 1), ("TensorProto", 8), ("FunctionProto", 1), ("FunctionProto", _FUNCTION_DOMAIN),
    ("OperatorSetIdProto", _OPSET_DOMAIN), ("StringStringEntryProto", _ENTRY_KEY),
    ("StringStringEntryProto", _ENTRY_VALUE),
}
