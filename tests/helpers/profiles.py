"""Checks of OTLP profiles export requests: the data model's rules a consumer relies on, and where samples go.

Used by the unit tests of the encoder and by the end-to-end tests on what the real receiver got, on the
``opentelemetry-proto`` messages themselves.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

__all__ = ["data_model_problems", "leaf_shares_by_span", "linked_spans"]


def data_model_problems(request: Any) -> list[str]:
    """What breaks the profiles data model in ``request`` (an ``ExportProfilesServiceRequest``); [] if none.

    Every table starts with its zero value and string 0 is ""; every index points into its table; each
    sample has one value per sample type (one sample type per profile in this release) and no timestamps
    outside the profile's time range; the time range is set.
    """
    problems: list[str] = []
    d = request.dictionary
    tables = {"mapping_table": d.mapping_table, "location_table": d.location_table,
              "function_table": d.function_table, "link_table": d.link_table,
              "attribute_table": d.attribute_table, "stack_table": d.stack_table}
    if not d.string_table or d.string_table[0] != "":
        problems.append("string_table[0] is not the empty string")
    for name, table in tables.items():
        if not len(table):
            problems.append(f"{name} has no zero value")
        elif table[0] != type(table[0])():
            problems.append(f"{name}[0] is not the zero value")

    def check(index: int, table: Any, what: str) -> None:
        if not 0 <= index < len(table):
            problems.append(f"{what} {index} out of range ({len(table)})")

    strings = d.string_table
    for function in d.function_table:
        for field in ("name_strindex", "system_name_strindex", "filename_strindex"):
            check(getattr(function, field), strings, f"function {field}")
    for location in d.location_table:
        check(location.mapping_index, d.mapping_table, "location mapping_index")
        for line in location.lines:
            check(line.function_index, d.function_table, "line function_index")
        for index in location.attribute_indices:
            check(index, d.attribute_table, "location attribute index")
    for stack in d.stack_table:
        for index in stack.location_indices:
            check(index, d.location_table, "stack location index")
    for attribute in d.attribute_table:
        check(attribute.key_strindex, strings, "attribute key_strindex")
    for link in list(d.link_table)[1:]:
        if len(link.trace_id) != 16 or len(link.span_id) != 8:
            problems.append("a link's ids are not 16 and 8 bytes")
    for resource_profiles in request.resource_profiles:
        for scope_profiles in resource_profiles.scope_profiles:
            for profile in scope_profiles.profiles:
                check(profile.sample_type.type_strindex, strings, "sample_type type_strindex")
                check(profile.sample_type.unit_strindex, strings, "sample_type unit_strindex")
                if not profile.time_unix_nano or not profile.duration_nano:
                    problems.append("the profile's time range is not set")
                end = profile.time_unix_nano + profile.duration_nano
                for sample in profile.samples:
                    check(sample.stack_index, d.stack_table, "sample stack_index")
                    check(sample.link_index, d.link_table, "sample link_index")
                    for index in sample.attribute_indices:
                        check(index, d.attribute_table, "sample attribute index")
                    if len(sample.values) != 1:
                        problems.append(f"a sample has {len(sample.values)} values for one sample type")
                    if any(v <= 0 for v in sample.values):
                        problems.append("a sample value is not positive")
                    if any(not profile.time_unix_nano <= t < end for t in sample.timestamps_unix_nano):
                        problems.append("a sample timestamp is outside the profile's time range")
    return problems


def _function_names(request: Any, stack_index: int) -> list[str]:
    """Function names of one stack, leaf first."""
    d = request.dictionary
    names = []
    for location_index in d.stack_table[stack_index].location_indices:
        for line in d.location_table[location_index].lines:
            names.append(d.string_table[d.function_table[line.function_index].name_strindex])
    return names


def linked_spans(requests: list[Any]) -> set[tuple[str, str]]:
    """(trace id hex, span id hex) of every span a sample links to."""
    out = set()
    for request in requests:
        links = request.dictionary.link_table
        for resource_profiles in request.resource_profiles:
            for scope_profiles in resource_profiles.scope_profiles:
                for profile in scope_profiles.profiles:
                    for sample in profile.samples:
                        if sample.link_index:
                            link = links[sample.link_index]
                            out.add((link.trace_id.hex(), link.span_id.hex()))
    return out


def leaf_shares_by_span(requests: list[Any]) -> dict[str, dict[str, float]]:
    """span id hex -> leaf function name -> share of that span's sample values."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for request in requests:
        links = request.dictionary.link_table
        for resource_profiles in request.resource_profiles:
            for scope_profiles in resource_profiles.scope_profiles:
                for profile in scope_profiles.profiles:
                    for sample in profile.samples:
                        if sample.link_index:
                            leaf = _function_names(request, sample.stack_index)[0]
                            totals[links[sample.link_index].span_id.hex()][leaf] += sum(sample.values)
    return {span: {leaf: value / sum(leaves.values()) for leaf, value in leaves.items()}
            for span, leaves in totals.items()}
