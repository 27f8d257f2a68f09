"""OTLP profiles encoding: the installed opentelemetry-proto's shape is checked before use, and what is
encoded keeps the data model's rules (checked on the generated messages after a round trip)."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.profiles.v1development import profiles_pb2

from otel_perf._config import load_settings
from otel_perf.profiling import continuous, otlp
from otel_perf.profiling.snapshot import Snapshot
from tests.helpers.profiles import data_model_problems, leaf_shares_by_span

TRACE_ID, SPAN_ID = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"


def snapshot() -> Snapshot:
    """Three threads, shared and distinct stacks, samples in two spans and outside any."""
    locations = [(("main", "app.py", 1), 3), (("hot", "app.py", 10), 12), (("cold", "lib.py", 5), 6),
                 (("main", "app.py", 1), 4)]
    other_span = ("ab" * 16, "cd" * 8, "root")
    return Snapshot(
        mode="cpu", period_ns=10_000_000, start_unix_ns=1_700_000_000_000_000_000, duration_ns=5_000_000_000,
        locations=locations,
        counts={
            (("MainThread", "", (TRACE_ID, SPAN_ID, "root")), (1, 2)): [9, 90_000_000],
            (("MainThread", "", (TRACE_ID, SPAN_ID, "root")), (1, 3)): [1, 10_000_000],
            (("worker", "task-1", other_span), (4, 3)): [2, 20_000_000],
            (("worker", "", ("", "", "")), (4, 3)): [5, 50_000_000],
        },
        comments=[],
    )


def round_trip(request: Any) -> Any:
    return ExportProfilesServiceRequest.FromString(request.SerializeToString())


def test_the_installed_messages_have_the_shape_encoded() -> None:
    """This environment's opentelemetry-proto carries what otel-perf writes."""
    assert otlp.shape_problem() is None


def test_encoding_keeps_the_data_model_rules() -> None:
    """Zero values first, string 0 empty, indices in range, one value per sample, links to the spans,
    the sample type and period of the mode, the window as time range."""
    request = round_trip(otlp.encode(snapshot(), {"service.name": "svc", "process.pid": 7, "k": [1, 2]},
                                     scope_version="1.0"))
    assert data_model_problems(request) == []
    d = request.dictionary
    (resource_profiles,) = request.resource_profiles
    attributes = {kv.key: kv.value for kv in resource_profiles.resource.attributes}
    assert attributes["service.name"].string_value == "svc" and attributes["process.pid"].int_value == 7
    assert [v.int_value for v in attributes["k"].array_value.values] == [1, 2]
    (scope_profiles,) = resource_profiles.scope_profiles
    assert (scope_profiles.scope.name, scope_profiles.scope.version) == ("otel_perf", "1.0")
    (profile,) = scope_profiles.profiles
    assert (d.string_table[profile.sample_type.type_strindex], d.string_table[profile.sample_type.unit_strindex]) \
        == ("cpu", "nanoseconds")
    assert profile.period == 10_000_000 and d.string_table[profile.period_type.type_strindex] == "cpu"
    assert (profile.time_unix_nano, profile.duration_nano) == (1_700_000_000_000_000_000, 5_000_000_000)
    assert len(profile.profile_id) == 16 and any(profile.profile_id)
    assert sorted(sum(s.values) for s in profile.samples) == [10_000_000, 20_000_000, 50_000_000, 90_000_000]
    links = {(link.trace_id.hex(), link.span_id.hex()) for link in list(d.link_table)[1:]}
    assert links == {(TRACE_ID, SPAN_ID), ("ab" * 16, "cd" * 8)}
    assert sum(1 for s in profile.samples if s.link_index == 0) == 1  # the sample outside any span
    shares = leaf_shares_by_span([request])
    assert shares[SPAN_ID] == {"hot": 0.9, "cold": 0.1}
    # leaf first in OTLP (outermost first in the snapshot); every location says it is a Python frame
    hot_sample = max(profile.samples, key=lambda s: s.values[0])
    leaf = d.location_table[d.stack_table[hot_sample.stack_index].location_indices[0]]
    assert d.string_table[d.function_table[leaf.lines[0].function_index].name_strindex] == "hot"
    assert leaf.lines[0].line == 12
    frame_type = d.attribute_table[leaf.attribute_indices[0]]
    assert (d.string_table[frame_type.key_strindex], frame_type.value.string_value) == (
        "profile.frame.type", "cpython")
    threads = {d.attribute_table[i].value.string_value for s in profile.samples for i in s.attribute_indices}
    assert threads == {"MainThread", "worker"}
    # two locations of one function share its function entry
    names = [d.string_table[f.name_strindex] for f in list(d.function_table)[1:]]
    assert sorted(names) == ["cold", "hot", "main"]


def _field(name: str, kind: int, repeated: bool) -> Any:
    return SimpleNamespace(name=name, type=kind, label=3 if repeated else 1, LABEL_REPEATED=3, is_repeated=repeated)


def _message(**fields: Any) -> Any:
    return SimpleNamespace(DESCRIPTOR=SimpleNamespace(fields_by_name=fields))


def test_a_missing_or_reshaped_field_is_named() -> None:
    """An older or newer release whose messages differ from what is encoded is caught, with the field
    that differs: a field gone, or one that became repeated (pre-1.40 releases had repeated sample types)."""
    from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2

    messages = {**vars(profiles_pb2), **vars(profiles_service_pb2)}
    service = profiles_service_pb2.DESCRIPTOR.services_by_name["ProfilesService"]
    assert otlp._check(messages, service) is None
    fields = dict(profiles_pb2.Sample.DESCRIPTOR.fields_by_name)
    del fields["link_index"]
    assert otlp._check({**messages, "Sample": _message(**fields)}, service) == "Sample.link_index is missing"
    profile = dict(profiles_pb2.Profile.DESCRIPTOR.fields_by_name)
    profile["sample_type"] = _field("sample_type", FieldDescriptor.TYPE_MESSAGE, repeated=True)
    assert otlp._check({**messages, "Profile": _message(**profile)}, service) == (
        "Profile.sample_type is repeated message, not message")
    link = dict(profiles_pb2.Link.DESCRIPTOR.fields_by_name)
    link["span_id"] = _field("span_id", FieldDescriptor.TYPE_STRING, repeated=False)
    assert otlp._check({**messages, "Link": _message(**link)}, service) == "Link.span_id is string, not bytes"
    del messages["KeyValueAndUnit"]
    assert otlp._check(messages, service) == "message KeyValueAndUnit is missing"


def test_profiling_stays_off_with_one_line_when_the_shape_differs(monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Continuous profiling does not start (no thread, nothing exported) and says why, once, naming the
    setting and what differs; the debug server's pprof endpoints are not affected."""
    monkeypatch.setattr(otlp, "_checked", True)
    monkeypatch.setattr(otlp, "_problem", "Sample.link_index is missing")
    before = threading.active_count()
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        assert continuous.start(load_settings(profiling="cpu")) is None
        assert continuous.start(load_settings(profiling="cpu")) is None
    assert threading.active_count() == before and continuous.current() is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert "OTEL_PERF_PROFILING=cpu is ignored" in message and "Sample.link_index is missing" in message
    assert "pprof endpoints" in message
