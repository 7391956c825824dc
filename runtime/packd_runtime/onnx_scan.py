"""What the runtime must know of an ONNX file before a loader sees it, read without the `onnx` package (the runtime
stays lean): its external-data references, the functions it defines, and its inputs and outputs.

An ONNX tensor may keep its values in another file (`data_location = EXTERNAL`, `external_data`
entry "location"); ONNX Runtime before 1.24 follows such a location anywhere, `../` and absolute
paths included. The runtime must see every location before a loader does, so this walks the
protobuf wire format through every place a tensor can sit: initializers, sparse initializers,
node attributes (Constant values, tensors, sparse tensors) and nested graphs (If / Loop / Scan
bodies, functions and their default attributes, training-info graphs). packd never emits ONNX functions, so the
runtime also refuses any graph that defines one (`local_functions`).
"""

from __future__ import annotations

from collections.abc import Iterator

from packd_runtime.errors import PackdError

# field numbers from onnx.proto (checked against the onnx package by the tests)
MODEL_GRAPH, MODEL_TRAINING_INFO, MODEL_FUNCTIONS = 7, 20, 25
TRAINING_INIT, TRAINING_ALGORITHM = 1, 2
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
FUNCTION_NAME, FUNCTION_NODE, FUNCTION_ATTRIBUTE_PROTO = 1, 7, 11
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
EXTERNAL = 1
GRAPH_INPUT, GRAPH_OUTPUT = 11, 12
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR, TENSOR_ELEM_TYPE, TENSOR_SHAPE, SHAPE_DIM, DIM_VALUE, DIM_PARAM = 1, 1, 2, 1, 1, 2
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of one message: ints for varints, bytes for length-delimited fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, value
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise ValueError("truncated field")
            yield number, buf[i:i + size]
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _tensor(buf: bytes) -> Iterator[str]:
    external, location = False, None
    for number, value in _fields(buf):
        if number == TENSOR_DATA_LOCATION and value == EXTERNAL:
            external = True
        elif number == TENSOR_EXTERNAL_DATA:
            entry = dict(_fields(value))
            if entry.get(ENTRY_KEY) == b"location":
                location = entry.get(ENTRY_VALUE, b"").decode("utf-8", "replace")
    if external or location is not None:
        yield location or ""


def _sparse(buf: bytes) -> Iterator[str]:
    for number, value in _fields(buf):
        if number in (SPARSE_VALUES, SPARSE_INDICES):
            yield from _tensor(value)


def _attribute(buf: bytes) -> Iterator[str]:
    for number, value in _fields(buf):
        if number in (ATTR_T, ATTR_TENSORS):
            yield from _tensor(value)
        elif number in (ATTR_G, ATTR_GRAPHS):
            yield from _graph(value)
        elif number in (ATTR_SPARSE, ATTR_SPARSES):
            yield from _sparse(value)


def _node(buf: bytes) -> Iterator[str]:
    for number, value in _fields(buf):
        if number == NODE_ATTRIBUTE:
            yield from _attribute(value)


def _graph(buf: bytes) -> Iterator[str]:
    for number, value in _fields(buf):
        if number == GRAPH_INITIALIZER:
            yield from _tensor(value)
        elif number == GRAPH_SPARSE_INITIALIZER:
            yield from _sparse(value)
        elif number == GRAPH_NODE:
            yield from _node(value)


def external_data_locations(model: bytes) -> list[str]:
    """Every external-data location an ONNX model refers to ('' for an external tensor without one)."""
    found = []
    try:
        for number, value in _fields(model):
            if number == MODEL_GRAPH:
                found += _graph(value)
            elif number == MODEL_FUNCTIONS:
                found += (loc for n, v in _fields(value) if n == FUNCTION_NODE for loc in _node(v))
                found += (loc for n, v in _fields(value) if n == FUNCTION_ATTRIBUTE_PROTO for loc in _attribute(v))
            elif number == MODEL_TRAINING_INFO:
                found += (loc for n, v in _fields(value) if n in (TRAINING_INIT, TRAINING_ALGORITHM)
                          for loc in _graph(v))
    except (ValueError, TypeError) as e:
        raise PackdError(f"not a readable ONNX file ({e})") from None
    return found


def local_functions(model: bytes) -> list[str]:
    """The names of the ONNX functions a model defines (packd's graphs define none)."""
    try:
        return [dict(_fields(value)).get(FUNCTION_NAME, b"?").decode("utf-8", "replace")
                for number, value in _fields(model) if number == MODEL_FUNCTIONS]
    except (ValueError, TypeError, AttributeError) as e:
        raise PackdError(f"not a readable ONNX file ({e})") from None


def _value_info(buf: bytes) -> tuple[str, str, list[int | str]]:
    fields = dict(_fields(buf))
    tensor = dict(_fields(dict(_fields(fields.get(VALUE_TYPE, b""))).get(TYPE_TENSOR, b"")))
    shape = []
    for number, dim in _fields(tensor.get(TENSOR_SHAPE, b"")):
        if number == SHAPE_DIM:
            d = dict(_fields(dim))
            shape.append(d[DIM_VALUE] if DIM_VALUE in d else d.get(DIM_PARAM, b"?").decode("utf-8", "replace"))
    elem = tensor.get(TENSOR_ELEM_TYPE, 0)
    return fields.get(VALUE_NAME, b"").decode("utf-8", "replace"), ELEM_TYPES.get(elem, f"elem_type {elem}"), shape


def graph_inputs_outputs(model: bytes) -> tuple[list[tuple[str, str, list]], list[tuple[str, str, list]]]:
    """The main graph's inputs and outputs as (name, dtype, shape); a dynamic dimension is its name."""
    try:
        graph = dict(_fields(model)).get(MODEL_GRAPH, b"")
        io: dict[int, list] = {GRAPH_INPUT: [], GRAPH_OUTPUT: []}
        for number, value in _fields(graph):
            if number in io:
                io[number].append(_value_info(value))
    except (ValueError, TypeError, AttributeError) as e:
        raise PackdError(f"not a readable ONNX file ({e})") from None
    return io[GRAPH_INPUT], io[GRAPH_OUTPUT]
