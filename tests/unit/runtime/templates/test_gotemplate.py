"""The Go text/template subset that Ollama template layers are written in."""

from __future__ import annotations

from typing import Any

import pytest

from corral_runtime.templates.gotemplate import GoTemplate, Record, TemplateError

pytestmark = pytest.mark.unit


def render(source: str, data: Any = None) -> str:
    return GoTemplate(source).render(data if data is not None else {})


class TestText:
    def test_plain_text_and_fields(self) -> None:
        assert render("Hi {{ .Name }}!", {"Name": "Ann"}) == "Hi Ann!"
        assert render("{{ .A.B }}", {"A": {"B": 3}}) == "3"

    def test_trim_markers(self) -> None:
        assert render("a  \n {{- .X -}} \n  b", {"X": "x"}) == "axb"
        assert render("a {{ .X }} b", {"X": "x"}) == "a x b"

    def test_negative_number_is_not_a_trim_marker(self) -> None:
        assert render("a {{-3}} b") == "a -3 b"

    def test_comments_vanish(self) -> None:
        assert render("a{{/* note */}}b{{- /* trimmed */ -}}  c") == "abc"

    def test_missing_field_prints_nothing_and_is_false(self) -> None:
        assert render("[{{ .Nope }}]{{ if .Nope }}yes{{ else }}no{{ end }}", {}) == "[]no"

    def test_values_print_like_go(self) -> None:
        data = {"T": True, "F": 1.0, "L": [1, "a"], "M": {"k": "v"}}
        assert render("{{ .T }} {{ .F }} {{ .L }} {{ .M }}", data) == 'true 1 [1,"a"] {"k":"v"}'

    def test_records_print_their_wire_form(self) -> None:
        tool = Record(
            {"Function": Record({"Name": "f"}, {"name": "f"})},
            {"type": "function", "function": {"name": "f"}},
        )
        assert render("{{ .T.Function.Name }} {{ .T }} {{ json .T }}", {"T": tool}) == (
            'f {"type":"function","function":{"name":"f"}} '
            '{"type":"function","function":{"name":"f"}}'
        )


class TestControl:
    def test_if_else_if_else(self) -> None:
        source = "{{ if eq .N 1 }}one{{ else if eq .N 2 }}two{{ else }}many{{ end }}"
        assert [render(source, {"N": n}) for n in (1, 2, 3)] == ["one", "two", "many"]

    def test_range_with_index_and_element(self) -> None:
        assert (
            render(
                "{{ range $i, $m := .L }}{{ $i }}:{{ $m.V }};{{ end }}",
                {"L": [{"V": "a"}, {"V": "b"}]},
            )
            == "0:a;1:b;"
        )

    def test_range_sets_dot_and_has_else(self) -> None:
        assert render("{{ range .L }}<{{ . }}>{{ else }}empty{{ end }}", {"L": [1, 2]}) == (
            "<1><2>"
        )
        assert render("{{ range .L }}x{{ else }}empty{{ end }}", {"L": []}) == "empty"

    def test_range_over_map_is_sorted_by_key(self) -> None:
        assert (
            render("{{ range $k, $v := .M }}{{ $k }}={{ $v }} {{ end }}", {"M": {"b": 2, "a": 1}})
            == "a=1 b=2 "
        )

    def test_break_and_continue(self) -> None:
        source = (
            "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}"
            "{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
        )
        assert render(source, {"L": [1, 2, 3, 4, 5]}) == "13"

    def test_with_and_else_with(self) -> None:
        source = "{{ with .A }}a={{ . }}{{ else with .B }}b={{ . }}{{ else }}none{{ end }}"
        assert render(source, {"A": "x"}) == "a=x"
        assert render(source, {"B": "y"}) == "b=y"
        assert render(source, {}) == "none"

    def test_variables_scope_and_assignment(self) -> None:
        source = (
            "{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ end }}{{ $x }}"
            "{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}"
        )
        assert render(source, {"L": [7, 8]}) == "28"

    def test_root_variable_inside_range(self) -> None:
        assert render("{{ range .L }}{{ $.P }}{{ . }}{{ end }}", {"L": [1, 2], "P": "-"}) == (
            "-1-2"
        )

    def test_variable_declared_in_block_is_gone_after_it(self) -> None:
        with pytest.raises(TemplateError, match="undefined variable"):
            render("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}")


class TestFunctions:
    def test_comparisons(self) -> None:
        assert (
            render('{{ eq .R "a" "b" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ ge 2 3 }}', {"R": "b"})
            == "true true true false"
        )

    def test_and_or_not_return_the_deciding_value(self) -> None:
        assert render('{{ and 1 "x" }} {{ or 0 "" "y" }} {{ not "" }}') == "x y true"

    def test_and_short_circuits(self) -> None:
        # The second operand would fail if evaluated (index out of range).
        assert render("{{ if and .L (index .L 5) }}x{{ else }}no{{ end }}", {"L": []}) == "no"

    def test_len_slice_index(self) -> None:
        data = {"L": [1, 2, 3, 4], "M": {"k": "v"}, "S": "hello"}
        assert (
            render(
                '{{ len .L }} {{ slice .L 1 3 }} {{ index .L 0 }} {{ index .M "k" }}'
                " {{ slice .S 1 }}",
                data,
            )
            == "4 [2,3] 1 v ello"
        )

    def test_pipelines_pass_the_value_last(self) -> None:
        assert render("{{ .L | len }}", {"L": [1, 2, 3]}) == "3"
        assert render('{{ "x" | printf "%s-%s" "a" }}') == "a-x"

    def test_parenthesised_pipelines_and_fields_on_them(self) -> None:
        assert (
            render("{{ (index .L 1).N }} {{ len (slice .L 1) }}", {"L": [{"N": 1}, {"N": 2}]})
            == "2 1"
        )

    def test_json_and_print(self) -> None:
        assert render('{{ json .M }} {{ print "a" 1 }}', {"M": {"a": [1]}}) == '{"a":[1]} a1'

    def test_literals(self) -> None:
        assert render('{{ `raw\\n` }} {{ "q\\n" }} {{ 0x10 }} {{ 1.5 }} {{ nil }}') == (
            "raw\\n q\n 16 1.5 "
        )


class TestErrors:
    @pytest.mark.parametrize(
        "source",
        [
            "{{ if .A }}never closed",
            "{{ end }}",
            "{{ range .L }}{{ else }}x{{ else }}y{{ end }}",
            "{{ .A",
            "{{ nosuchfunc 1 }}",
            '{{ template "x" }}',
            '{{ define "x" }}{{ end }}',
            "{{ }}",
            "{{ .A | }}",
            "{{ ( .A }}",
            "{{ # }}",
        ],
    )
    def test_bad_templates_fail_to_parse(self, source: str) -> None:
        with pytest.raises(TemplateError):
            GoTemplate(source)

    @pytest.mark.parametrize(
        ("source", "data"),
        [
            ("{{ index .L 3 }}", {"L": [1]}),
            ("{{ .S.Field }}", {"S": "text"}),
            ("{{ len 3 }}", {}),
            ('{{ lt 1 "a" }}', {}),
            ("{{ eq .L .L }}", {"L": [1]}),
            ("{{ range 1.5 }}{{ end }}", {}),
            ("{{ break }}", {}),
            ("{{ .A 1 }}", {"A": 1}),
        ],
    )
    def test_runtime_errors(self, source: str, data: Any) -> None:
        with pytest.raises(TemplateError):
            render(source, data)

    def test_python_internals_are_out_of_reach(self) -> None:
        # Fields are dictionary keys only: attributes of Python objects are never read.
        with pytest.raises(TemplateError):
            render("{{ .S.__class__ }}", {"S": "x"})
        assert render("{{ .__class__ }}", {}) == ""
