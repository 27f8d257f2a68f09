"""A hand-written encoder and decoder for pprof's ``profile.proto``.

Why this module exists: ``go tool pprof`` (and every pprof-reading backend) takes gzipped
``perftools.profiles.Profile`` messages. Generating code with ``protoc`` would tie otel-perf to one exact
protobuf runtime version, which the OpenTelemetry packages already pin for their own use; the wire format
needed here is tiny (varints and length-delimited fields), so it is written out by hand. The decoder serves
the flame-graph renderer and the tests.

Field numbers follow https://github.com/google/pprof/blob/main/proto/profile.proto.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Function",
    "Label",
    "Line",
    "Location",
    "Profile",
    "ProfileBuilder",
    "Sample",
    "ValueType",
    "decode",
    "encode",
    "python_function_name",
]

_VARINT = 0
_LEN = 2


# --- wire format -------------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    """Base-128 varint; negative int64 values take ten bytes (two's complement), as protobuf does."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _int_field(out: bytearray, number: int, value: int) -> None:
    """A scalar int field; zero is the default and is omitted (proto3)."""
    if value:
        out += _key(number, _VARINT)
        out += _varint(value)


def _bool_field(out: bytearray, number: int, value: bool) -> None:
    _int_field(out, number, 1 if value else 0)


def _bytes_field(out: bytearray, number: int, value: bytes) -> None:
    out += _key(number, _LEN)
    out += _varint(len(value))
    out += value


def _packed_field(out: bytearray, number: int, values: Sequence[int]) -> None:
    if values:
        _bytes_field(out, number, b"".join(_varint(v) for v in values))


def _read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("malformed varint")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of one message."""
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
            yield number, wire_type, value
        elif wire_type == _LEN:
            size, pos = _read_varint(data, pos)
            if pos + size > end:
                raise ValueError("truncated length-delimited field")
            yield number, wire_type, bytes(data[pos:pos + size])
            pos += size
        elif wire_type == 1:
            yield number, wire_type, int.from_bytes(data[pos:pos + 8], "little")
            pos += 8
        elif wire_type == 5:
            yield number, wire_type, int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")


def _ints(wire_type: int, value: int | bytes) -> list[int]:
    """A repeated int field's values, whether packed or not."""
    if wire_type == _LEN:
        assert isinstance(value, bytes)
        out = []
        pos = 0
        while pos < len(value):
            item, pos = _read_varint(value, pos)
            out.append(_signed(item))
        return out
    assert isinstance(value, int)
    return [_signed(value)]


def python_function_name(qualname: str, filename: str) -> str:
    """The name a Python function gets in a profile.

    pprof drops names that start with ``<`` (it takes them for C++ template arguments), which would turn
    ``<module>``, ``<lambda>`` and ``<listcomp>`` at module level into ``[python]``; they are prefixed with
    the module's file name (``app.<module>``).
    """
    if qualname.startswith("<"):
        stem = filename.replace("\\", "/").rsplit("/", 1)[-1]
        stem = stem[:-3] if stem.endswith(".py") else stem
        stem = stem.strip("<>").replace(" ", ":")  # "<frozen importlib._bootstrap>", "<string>"
        return f"{stem or '?'}.{qualname}"
    return qualname


# --- the model ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class ValueType:
    """A sample value's type and unit, e.g. ``cpu``/``nanoseconds``."""

    type: str
    unit: str


@dataclass(slots=True)
class Label:
    """A sample label: a string value (proto field ``str``) or a number with an optional unit."""

    key: str
    value: str = ""
    num: int = 0
    num_unit: str = ""


@dataclass(slots=True)
class Sample:
    """One stack (location ids, leaf first) with its values and labels."""

    location_ids: list[int]
    values: list[int]
    labels: list[Label] = field(default_factory=list)


@dataclass(slots=True)
class Line:
    function_id: int
    line: int


@dataclass(slots=True)
class Location:
    id: int
    lines: list[Line]
    mapping_id: int = 0


@dataclass(slots=True)
class Function:
    id: int
    name: str
    filename: str = ""
    start_line: int = 0
    system_name: str = ""


@dataclass(slots=True)
class Profile:
    """A decoded (or to-be-encoded) profile, with strings resolved."""

    sample_types: list[ValueType]
    samples: list[Sample] = field(default_factory=list)
    locations: dict[int, Location] = field(default_factory=dict)
    functions: dict[int, Function] = field(default_factory=dict)
    time_nanos: int = 0
    duration_nanos: int = 0
    period_type: ValueType | None = None
    period: int = 0
    comments: list[str] = field(default_factory=list)
    default_sample_type: str = ""

    def stacks(self) -> Iterator[tuple[list[str], Sample]]:
        """Each sample with its function names, root first (the order flame graphs draw)."""
        for sample in self.samples:
            names: list[str] = []
            for location_id in reversed(sample.location_ids):
                location = self.locations.get(location_id)
                if location is None:
                    continue
                # A location's lines are innermost first; root-first order reverses them.
                for line in reversed(location.lines):
                    function = self.functions.get(line.function_id)
                    names.append(function.name if function else "?")
            yield names, sample

    def sample_index(self, type_name: str | None = None) -> int:
        """Index of the value named ``type_name`` (default: the default sample type, else the last)."""
        wanted = type_name or self.default_sample_type
        for index, value_type in enumerate(self.sample_types):
            if value_type.type == wanted:
                return index
        return len(self.sample_types) - 1


# --- encoding ----------------------------------------------------------------------------------------

class ProfileBuilder:
    """Accumulates functions, locations and samples, interning strings; ``encode()`` gives the bytes.

    Usage::

        b = ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")], period_type=("cpu", "nanoseconds"),
                           period=10_000_000)
        f = b.function("main", "app.py", 1)
        loc = b.location(f, 12)
        b.sample([loc], [1, 10_000_000], {"thread": "MainThread"})
        data = b.encode()   # gzipped
    """

    def __init__(
        self,
        sample_types: Sequence[tuple[str, str]],
        *,
        period_type: tuple[str, str] | None = None,
        period: int = 0,
        default_sample_type: str | None = None,
    ) -> None:
        self._strings: dict[str, int] = {"": 0}
        self._sample_types = [(self.string(t), self.string(u)) for t, u in sample_types]
        self._period_type = (
            (self.string(period_type[0]), self.string(period_type[1])) if period_type else None
        )
        self._period = period
        self._default_sample_type = self.string(default_sample_type) if default_sample_type else 0
        self._functions: dict[tuple[str, str, int], int] = {}
        self._function_records: list[bytes] = []
        self._locations: dict[tuple[int, int], int] = {}
        self._location_records: list[bytes] = []
        self._samples: list[bytes] = []
        self._comments: list[int] = []
        self.time_nanos = time.time_ns()
        self.duration_nanos = 0

    def string(self, value: str) -> int:
        """Index of ``value`` in the string table."""
        index = self._strings.get(value)
        if index is None:
            index = self._strings[value] = len(self._strings)
        return index

    def function(self, name: str, filename: str = "", start_line: int = 0) -> int:
        """Id of the function (created once per name, file and first line)."""
        key = (name, filename, start_line)
        function_id = self._functions.get(key)
        if function_id is None:
            function_id = self._functions[key] = len(self._functions) + 1
            record = bytearray()
            _int_field(record, 1, function_id)
            _int_field(record, 2, self.string(name))
            _int_field(record, 3, self.string(name))
            _int_field(record, 4, self.string(filename))
            _int_field(record, 5, start_line)
            self._function_records.append(bytes(record))
        return function_id

    def location(self, function_id: int, line: int) -> int:
        """Id of the location of one line of one function."""
        key = (function_id, line)
        location_id = self._locations.get(key)
        if location_id is None:
            location_id = self._locations[key] = len(self._locations) + 1
            line_record = bytearray()
            _int_field(line_record, 1, function_id)
            _int_field(line_record, 2, line)
            record = bytearray()
            _int_field(record, 1, location_id)
            _int_field(record, 2, 1)  # the one mapping, below
            _bytes_field(record, 4, bytes(line_record))
            self._location_records.append(bytes(record))
        return location_id

    def sample(self, location_ids: Sequence[int], values: Sequence[int],
               labels: Iterable[tuple[str, str]] | dict[str, str] = ()) -> None:
        """Add one sample: location ids leaf first, one value per sample type, string labels."""
        record = bytearray()
        _packed_field(record, 1, location_ids)
        _packed_field(record, 2, values)
        items = labels.items() if isinstance(labels, dict) else labels
        for key, value in items:
            if not value:
                continue
            label = bytearray()
            _int_field(label, 1, self.string(key))
            _int_field(label, 2, self.string(value))
            _bytes_field(record, 3, bytes(label))
        self._samples.append(bytes(record))

    def comment(self, text: str) -> None:
        self._comments.append(self.string(text))

    def encode(self, compress: bool = True) -> bytes:
        """The serialized ``Profile``, gzipped unless ``compress`` is False."""
        out = bytearray()
        for type_index, unit_index in self._sample_types:
            value_type = bytearray()
            _int_field(value_type, 1, type_index)
            _int_field(value_type, 2, unit_index)
            _bytes_field(out, 1, bytes(value_type))
        for record in self._samples:
            _bytes_field(out, 2, record)
        # One mapping that says every location is already symbolized, so pprof never tries to
        # symbolize against a binary.
        mapping = bytearray()
        _int_field(mapping, 1, 1)
        _int_field(mapping, 5, self.string("python"))
        for number in (7, 8, 9):
            _bool_field(mapping, number, True)
        _bytes_field(out, 3, bytes(mapping))
        for record in self._location_records:
            _bytes_field(out, 4, record)
        for record in self._function_records:
            _bytes_field(out, 5, record)
        strings = list(self._strings)
        for text in strings:
            _bytes_field(out, 6, text.encode("utf-8", "replace"))
        _int_field(out, 9, self.time_nanos)
        _int_field(out, 10, self.duration_nanos)
        if self._period_type is not None:
            period_type = bytearray()
            _int_field(period_type, 1, self._period_type[0])
            _int_field(period_type, 2, self._period_type[1])
            _bytes_field(out, 11, bytes(period_type))
        _int_field(out, 12, self._period)
        _packed_field(out, 13, self._comments)
        _int_field(out, 14, self._default_sample_type)
        raw = bytes(out)
        # mtime=0 keeps the output a pure function of the profile.
        return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def encode(profile: Profile, compress: bool = True) -> bytes:
    """Encode a :class:`Profile` model (the inverse of :func:`decode`)."""
    builder = ProfileBuilder(
        [(v.type, v.unit) for v in profile.sample_types],
        period_type=(profile.period_type.type, profile.period_type.unit) if profile.period_type else None,
        period=profile.period,
        default_sample_type=profile.default_sample_type or None,
    )
    builder.time_nanos = profile.time_nanos
    builder.duration_nanos = profile.duration_nanos
    function_ids = {
        fid: builder.function(f.name, f.filename, f.start_line) for fid, f in profile.functions.items()
    }
    for sample in profile.samples:
        ids: list[int] = []
        for location_id in sample.location_ids:
            location = profile.locations[location_id]
            for line in location.lines:
                ids.append(builder.location(function_ids[line.function_id], line.line))
        builder.sample(ids, sample.values, [(label.key, label.value) for label in sample.labels])
    for text in profile.comments:
        builder.comment(text)
    return builder.encode(compress)


# --- decoding ----------------------------------------------------------------------------------------

def decode(data: bytes) -> Profile:
    """Decode a (gzipped or raw) serialized ``Profile``.

    Raises:
        ValueError: the bytes are not a profile.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    strings: list[str] = []
    raw_types: list[tuple[int, int]] = []
    raw_samples: list[tuple[list[int], list[int], list[tuple[int, int, int, int]]]] = []
    raw_locations: list[tuple[int, int, list[tuple[int, int]]]] = []
    raw_functions: list[tuple[int, int, int, int, int]] = []
    period_type: tuple[int, int] | None = None
    scalars = {9: 0, 10: 0, 12: 0, 14: 0}
    comments: list[int] = []

    def pair(message: bytes) -> tuple[int, int]:
        values = {1: 0, 2: 0}
        for number, _, value in _fields(message):
            if number in values and isinstance(value, int):
                values[number] = value
        return values[1], values[2]

    for number, wire_type, value in _fields(data):
        if number == 1 and isinstance(value, bytes):
            raw_types.append(pair(value))
        elif number == 2 and isinstance(value, bytes):
            location_ids: list[int] = []
            values: list[int] = []
            labels: list[tuple[int, int, int, int]] = []
            for n, w, v in _fields(value):
                if n == 1:
                    location_ids += _ints(w, v)
                elif n == 2:
                    values += _ints(w, v)
                elif n == 3 and isinstance(v, bytes):
                    label = {1: 0, 2: 0, 3: 0, 4: 0}
                    for ln, _, lv in _fields(v):
                        if ln in label and isinstance(lv, int):
                            label[ln] = lv
                    labels.append((label[1], label[2], _signed(label[3]), label[4]))
            raw_samples.append((location_ids, values, labels))
        elif number == 4 and isinstance(value, bytes):
            location_id = mapping_id = 0
            lines: list[tuple[int, int]] = []
            for n, _, v in _fields(value):
                if n == 1 and isinstance(v, int):
                    location_id = v
                elif n == 2 and isinstance(v, int):
                    mapping_id = v
                elif n == 4 and isinstance(v, bytes):
                    function_id, line = pair(v)
                    lines.append((function_id, _signed(line)))
            raw_locations.append((location_id, mapping_id, lines))
        elif number == 5 and isinstance(value, bytes):
            record = {1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
            for n, _, v in _fields(value):
                if n in record and isinstance(v, int):
                    record[n] = v
            raw_functions.append((record[1], record[2], record[3], record[4], _signed(record[5])))
        elif number == 6 and isinstance(value, bytes):
            strings.append(value.decode("utf-8", "replace"))
        elif number == 11 and isinstance(value, bytes):
            period_type = pair(value)
        elif number == 13:
            comments += _ints(wire_type, value)
        elif number in scalars and isinstance(value, int):
            scalars[number] = _signed(value)
    if not strings or strings[0] != "":
        raise ValueError("not a pprof profile: the string table must start with an empty string")

    def s(index: int) -> str:
        return strings[index] if 0 <= index < len(strings) else ""

    profile = Profile(sample_types=[ValueType(s(t), s(u)) for t, u in raw_types])
    for function_id, name, system_name, filename, start_line in raw_functions:
        profile.functions[function_id] = Function(function_id, s(name), s(filename), start_line,
                                                  s(system_name))
    for location_id, mapping_id, lines in raw_locations:
        profile.locations[location_id] = Location(location_id, [Line(f, n) for f, n in lines], mapping_id)
    for location_ids, values, labels in raw_samples:
        profile.samples.append(Sample(
            location_ids, values,
            [Label(s(key), s(text), num, s(unit)) for key, text, num, unit in labels],
        ))
    profile.time_nanos = scalars[9]
    profile.duration_nanos = scalars[10]
    profile.period = scalars[12]
    profile.period_type = ValueType(s(period_type[0]), s(period_type[1])) if period_type else None
    profile.comments = [s(i) for i in comments]
    profile.default_sample_type = s(scalars[14])
    return profile
