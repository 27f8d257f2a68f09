"""A sampler's snapshot as an OTLP profiles export request (``opentelemetry.proto.profiles.v1development``).

Why this module exists: continuous profiling exports through the OTLP profiles signal, which no
OpenTelemetry Python package writes yet. The request is built with ``opentelemetry-proto``'s generated
messages, so the bytes are whatever the installed release defines: the profiles signal is alpha and its
messages still change between releases (``Sample``'s field numbers moved between opentelemetry-proto 1.40
and 1.45), so :func:`shape_problem` checks at start-up that the installed messages have every field this
module sets, with the kind and cardinality it sets it with; when they do not, OTLP profiles stay off and
the pprof endpoints work as before.

The data model's rules a consumer relies on, and how they are kept:

* every table of the request's ``ProfilesDictionary`` starts with its zero value (``string_table[0]`` is
  ``""``; ``mapping_table`` holds only that: Python frames have no binary mapping), so index 0 means
  "none" everywhere, and every index written points into its table;
* one profile per request, one sample type: ``cpu``/``nanoseconds`` (CPU mode) or ``wall``/``nanoseconds``,
  one value per sample, the CPU or wall time its stack was seen using over the window;
* ``time_unix_nano`` and ``duration_nano`` cover the window the samples were taken in;
* a sample taken while a span was active links to it (``link_index`` into ``link_table``, trace and
  span ids as bytes); other samples have ``link_index`` 0;
* stacks list locations leaf first; each location has one line of one function and the attribute
  ``profile.frame.type`` = ``cpython``; samples carry ``thread.name``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from otel_perf._semconv import PROFILE_FRAME_TYPE, PROFILE_FRAME_TYPE_CPYTHON, THREAD_NAME
from otel_perf.profiling.snapshot import Snapshot

__all__ = ["GRPC_METHOD", "HTTP_PATH", "encode", "shape_problem"]

#: The gRPC method and the HTTP path of the OTLP profiles service (``v1development`` while it is alpha).
GRPC_METHOD = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"
HTTP_PATH = "/v1development/profiles"
#: The attribute table's entry every location refers to: ``profile.frame.type`` = ``cpython``.
_FRAME_TYPE_ATTRIBUTE = 1


# message -> {field: (kind, repeated)}: every field encode() sets. Kinds: "message", "string", "bytes", "int".
_SHAPE: dict[str, dict[str, tuple[str, bool]]] = {
    "ExportProfilesServiceRequest": {"resource_profiles": ("message", True), "dictionary": ("message", False)},
    "ProfilesDictionary": {"mapping_table": ("message", True), "location_table": ("message", True),
                           "function_table": ("message", True), "link_table": ("message", True),
                           "string_table": ("string", True),
                           "attribute_table": ("message", True), "stack_table": ("message", True)},
    "ResourceProfiles": {"resource": ("message", False), "scope_profiles": ("message", True),
                         "schema_url": ("string", False)},
    "ScopeProfiles": {"scope": ("message", False), "profiles": ("message", True), "schema_url": ("string", False)},
    "Profile": {"sample_type": ("message", False), "samples": ("message", True), "time_unix_nano": ("int", False),
                "duration_nano": ("int", False), "period_type": ("message", False), "period": ("int", False),
                "profile_id": ("bytes", False)},
    "ValueType": {"type_strindex": ("int", False), "unit_strindex": ("int", False)},
    "Sample": {"stack_index": ("int", False), "attribute_indices": ("int", True), "link_index": ("int", False),
               "values": ("int", True)},
    "Stack": {"location_indices": ("int", True)},
    "Location": {"lines": ("message", True), "attribute_indices": ("int", True)},
    "Line": {"function_index": ("int", False), "line": ("int", False)},
    "Function": {"name_strindex": ("int", False), "system_name_strindex": ("int", False),
                 "filename_strindex": ("int", False), "start_line": ("int", False)},
    "KeyValueAndUnit": {"key_strindex": ("int", False), "value": ("message", False)},
    "Link": {"trace_id": ("bytes", False), "span_id": ("bytes", False)},
}

_problem: str | None = None
_checked = False


def _kind(field: Any) -> str:
    from google.protobuf.descriptor import FieldDescriptor

    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return "message"
    if field.type == FieldDescriptor.TYPE_STRING:
        return "string"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return "bytes"
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
                      FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
                      FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
                      FieldDescriptor.TYPE_SFIXED64):
        return "int"
    return f"type {field.type}"


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf 6.31+; `label` is deprecated there
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    return bool(field.label == field.LABEL_REPEATED)


def _check(messages: Mapping[str, Any], service: Any) -> str | None:
    for name, fields in _SHAPE.items():
        message = messages.get(name)
        if message is None:
            return f"message {name} is missing"
        by_name = message.DESCRIPTOR.fields_by_name
        for field_name, (kind, repeated) in fields.items():
            field = by_name.get(field_name)
            if field is None:
                return f"{name}.{field_name} is missing"
            if _kind(field) != kind or _repeated(field) != repeated:
                actual = f"{'repeated ' if _repeated(field) else ''}{_kind(field)}"
                return f"{name}.{field_name} is {actual}, not {'repeated ' if repeated else ''}{kind}"
    method = service.methods_by_name.get("Export") if service is not None else None
    if method is None or f"/{service.full_name}/Export" != GRPC_METHOD:
        return f"the profiles service is not {GRPC_METHOD}"
    return None


def shape_problem() -> str | None:
    """Why the installed ``opentelemetry-proto`` cannot carry the profiles this module writes, or None.

    Checked once per process: the profiles messages exist, and each field :func:`encode` sets has the
    kind (message, string, bytes, integer) and cardinality (single, repeated) it is set with.
    """
    global _problem, _checked
    if not _checked:
        try:
            from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
            from opentelemetry.proto.profiles.v1development import profiles_pb2
        except ImportError as exc:
            _problem = f"opentelemetry-proto has no profiles messages ({exc})"
        else:
            messages = {**vars(profiles_pb2), **vars(profiles_service_pb2)}
            service = profiles_service_pb2.DESCRIPTOR.services_by_name.get("ProfilesService")
            _problem = _check(messages, service)
        _checked = True
    return _problem


def _any_value(value: Any, any_value_type: Any) -> Any:
    """An OTLP ``AnyValue`` for a resource attribute (str, bool, int, float, or a sequence of them)."""
    if isinstance(value, bool):
        return any_value_type(bool_value=value)
    if isinstance(value, int):
        return any_value_type(int_value=value)
    if isinstance(value, float):
        return any_value_type(double_value=value)
    if isinstance(value, (list, tuple)):
        from opentelemetry.proto.common.v1.common_pb2 import ArrayValue

        return any_value_type(array_value=ArrayValue(values=[_any_value(v, any_value_type) for v in value]))
    return any_value_type(string_value=str(value))


def encode(snapshot: Snapshot, resource: Mapping[str, Any], *, resource_schema_url: str = "",
           scope_name: str = "otel_perf", scope_version: str = "", scope_schema_url: str = "",
           profile_id: bytes | None = None) -> Any:
    """The ``ExportProfilesServiceRequest`` of one snapshot: one resource, one scope, one profile.

    Args:
        snapshot: what a sampler collected over one window.
        resource: the resource attributes (the tracer provider's, with this process's ``process.pid``).
        resource_schema_url, scope_name, scope_version, scope_schema_url: as the other signals have them.
        profile_id: 16 bytes identifying the profile (default: random).
    """
    from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
        ExportProfilesServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    # The messages are made in place in the request (``add``): made apart and then appended, each would
    # be copied once more (a quarter of the encoding time of a 6 000-sample profile).
    request = ExportProfilesServiceRequest()
    dictionary = request.dictionary
    dictionary.mapping_table.add()  # none used: index 0, "unknown", but present (zero value)
    strings: dict[str, int] = {"": 0}

    def string(text: str) -> int:
        index = strings.get(text)
        if index is None:
            index = strings[text] = len(strings)
        return index

    functions: dict[tuple[str, str, int], int] = {}
    function_table = dictionary.function_table
    function_table.add()
    attribute_table = dictionary.attribute_table
    attribute_table.add()
    # Index 1 (_FRAME_TYPE_ATTRIBUTE): every frame is a CPython frame.
    attribute_table.add(key_strindex=string(PROFILE_FRAME_TYPE),
                        value=AnyValue(string_value=PROFILE_FRAME_TYPE_CPYTHON))
    # The snapshot's location ids are 1-based and dense: location_table[i] is location i.
    location_table = dictionary.location_table
    location_table.add()
    for (name, filename, first_line), line in snapshot.locations:
        key = (name, filename, first_line)
        function_index = functions.get(key)
        if function_index is None:
            function_index = functions[key] = len(function_table)
            name_index = string(name)
            function_table.add(name_strindex=name_index, system_name_strindex=name_index,
                               filename_strindex=string(filename), start_line=first_line)
        location = location_table.add()
        location.lines.add(function_index=function_index, line=line)
        location.attribute_indices.append(_FRAME_TYPE_ATTRIBUTE)
    stacks: dict[tuple[int, ...], int] = {}
    stack_table = dictionary.stack_table
    stack_table.add()
    add_stack = stack_table.add
    links: dict[tuple[str, str], int] = {}
    link_table = dictionary.link_table
    link_table.add()
    threads: dict[str, int] = {}
    resource_profiles = request.resource_profiles.add(schema_url=resource_schema_url)
    scope_profiles = resource_profiles.scope_profiles.add(schema_url=scope_schema_url)
    profile = scope_profiles.profiles.add()
    add_sample = profile.samples.add
    for ((thread, _task, (trace_id, span_id, _root)), stack), (_count, value) in snapshot.counts.items():
        stack_index = stacks.get(stack)
        if stack_index is None:
            stack_index = stacks[stack] = len(stacks) + 1
            # Kept outermost first; OTLP lists the leaf first. (extend: about half the time of a keyword.)
            add_stack().location_indices.extend(stack[::-1])
        thread_index = threads.get(thread)
        if thread_index is None:
            thread_index = threads[thread] = len(attribute_table)
            attribute_table.add(key_strindex=string(THREAD_NAME), value=AnyValue(string_value=thread))
        link_index = 0
        if span_id:
            link_index = links.get((trace_id, span_id), 0)
            if not link_index:
                link_index = links[(trace_id, span_id)] = len(links) + 1
                link_table.add(trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id))
        sample = add_sample(stack_index=stack_index, link_index=link_index)
        sample.attribute_indices.append(thread_index)
        sample.values.append(value)
    value_type = pb.ValueType(type_strindex=string(snapshot.mode), unit_strindex=string("nanoseconds"))
    profile.sample_type.CopyFrom(value_type)
    profile.period_type.CopyFrom(value_type)
    profile.time_unix_nano = snapshot.start_unix_ns
    profile.duration_nano = snapshot.duration_ns
    profile.period = snapshot.period_ns
    profile.profile_id = profile_id if profile_id is not None else os.urandom(16)
    dictionary.string_table.extend(strings)
    resource_profiles.resource.CopyFrom(Resource(attributes=[
        KeyValue(key=str(key), value=_any_value(value, AnyValue)) for key, value in resource.items()]))
    scope_profiles.scope.CopyFrom(InstrumentationScope(name=scope_name, version=scope_version))
    return request
