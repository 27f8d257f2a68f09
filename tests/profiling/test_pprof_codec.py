"""The hand-written profile.proto codec: what it writes decodes to the same profile, byte-compatible with
protobuf's wire format (negative int64, packed fields, gzip)."""

from __future__ import annotations

import gzip

import pytest

from otel_perf.profiling import pprof


def _builder() -> pprof.ProfileBuilder:
    b = pprof.ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")],
                             period_type=("cpu", "nanoseconds"), period=10_000_000, default_sample_type="cpu")
    main = b.function("main", "app.py", 1)
    work = b.function("work", "app.py", 10)
    b.sample([b.location(work, 12), b.location(main, 3)], [3, 30_000_000], {"thread": "MainThread"})
    b.sample([b.location(main, 4)], [1, 10_000_000], {"thread": "worker", "task": ""})
    b.duration_nanos = 2_000_000_000
    b.comment("hello")
    return b


def test_encoded_profile_decodes_to_the_same_samples_functions_and_labels() -> None:
    """Samples, stacks (leaf first), functions, labels, period and duration survive a round trip."""
    profile = pprof.decode(_builder().encode())
    assert [(v.type, v.unit) for v in profile.sample_types] == [("samples", "count"), ("cpu", "nanoseconds")]
    assert profile.period == 10_000_000
    assert profile.period_type is not None and profile.period_type.type == "cpu"
    assert profile.duration_nanos == 2_000_000_000
    assert profile.default_sample_type == "cpu"
    assert profile.comments == ["hello"]
    stacks = [(names, s.values, [(lb.key, lb.value) for lb in s.labels]) for names, s in profile.stacks()]
    assert stacks == [
        (["main", "work"], [3, 30_000_000], [("thread", "MainThread")]),
        (["main"], [1, 10_000_000], [("thread", "worker")]),  # empty label values are left out
    ]
    work = next(f for f in profile.functions.values() if f.name == "work")
    assert (work.filename, work.start_line) == ("app.py", 10)


def test_output_is_gzip_and_raw_encoding_is_available() -> None:
    """pprof files are gzipped protobuf; decode accepts both forms."""
    builder = _builder()
    data = builder.encode()
    assert data[:2] == b"\x1f\x8b"
    raw = gzip.decompress(data)
    assert raw == builder.encode(compress=False)
    assert len(pprof.decode(raw).samples) == 2


def test_negative_values_use_ten_byte_varints_like_protobuf() -> None:
    """int64 fields with negative values (diff profiles) encode as two's complement and decode back."""
    assert len(pprof._varint(-1)) == 10
    assert pprof._varint(300) == b"\xac\x02"
    b = pprof.ProfileBuilder([("inuse_space", "bytes")])
    f = b.function("shrink")
    b.sample([b.location(f, 1)], [-4096])
    assert pprof.decode(b.encode()).samples[0].values == [-4096]


def test_encode_of_a_decoded_profile_is_equivalent() -> None:
    """encode(decode(x)) keeps every stack and value (the model can be edited and written back)."""
    original = pprof.decode(_builder().encode())
    again = pprof.decode(pprof.encode(original))
    assert [(n, s.values) for n, s in again.stacks()] == [(n, s.values) for n, s in original.stacks()]


def test_decode_rejects_bytes_that_are_not_a_profile() -> None:
    """A page of HTML (a wrong URL) is reported as an error, not decoded into nonsense."""
    with pytest.raises((ValueError, IndexError)):
        pprof.decode(b"<html>not found</html>")


@pytest.mark.parametrize(("qualname", "filename", "expected"), [
    ("work", "/x/app.py", "work"),
    ("Klass.method", "/x/app.py", "Klass.method"),
    ("outer.<locals>.inner", "/x/app.py", "outer.<locals>.inner"),
    ("<module>", "/x/app.py", "app.<module>"),
    ("<lambda>", "/x/tool.py", "tool.<lambda>"),
    ("<module>", "<frozen importlib._bootstrap>", "frozen:importlib._bootstrap.<module>"),
])
def test_python_names_that_pprof_would_drop_get_a_module_prefix(qualname: str, filename: str,
                                                                 expected: str) -> None:
    """pprof drops names starting with '<' (C++ templates); module-level code keeps a readable name."""
    assert pprof.python_function_name(qualname, filename) == expected
