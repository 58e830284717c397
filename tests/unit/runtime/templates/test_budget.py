"""Rendering budgets: an untrusted template stops by itself when its time, steps or size run out."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from corral_runtime.templates.budget import (
    RenderBudget,
    TemplateBudgetError,
    metered,
    render_off_loop,
)
from corral_runtime.templates.chat import GoChatTemplate
from corral_runtime.templates.gotemplate import TemplateError
from corral_runtime.templates.jinja import JinjaChatTemplate
from corral_runtime.templates.messages import ChatMessage

pytestmark = pytest.mark.unit

HELLO = [ChatMessage(role="user", content="hi")]
NESTED_JINJA = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
NESTED_GO = "{{ range 1000000 }}{{ range 1000000 }}{{ end }}{{ end }}"


def jinja_budget_error(source: str, budget: RenderBudget | None = None) -> TemplateBudgetError:
    with pytest.raises(TemplateBudgetError) as caught, metered(budget or RenderBudget()):
        JinjaChatTemplate(source).render(HELLO)
    return caught.value


class TestJinja:
    def test_nested_loops_stop_at_the_step_budget(self) -> None:
        error = jinja_budget_error(NESTED_JINJA, RenderBudget(max_steps=10_000))
        assert error.kind == "step"
        assert str(error) == "the model's chat template exceeded its step budget (10000 steps)"

    def test_nested_loops_stop_at_the_time_budget(self) -> None:
        started = time.monotonic()
        error = jinja_budget_error(NESTED_JINJA, RenderBudget(seconds=0.2, max_steps=10**12))
        assert error.kind == "time"
        assert time.monotonic() - started < 2.0

    def test_output_is_measured_as_it_is_written(self) -> None:
        source = "{% for i in range(100) %}{{ 'x' * 100 }}{% endfor %}"
        error = jinja_budget_error(source, RenderBudget(max_output_chars=5_000))
        assert error.kind == "size"

    @pytest.mark.parametrize(
        "source",
        [
            "{{ 'x' * 1000000000 }}",
            "{{ 1000000000 * ['x'] }}",
            "{{ 'x'|center(1000000000) }}",
            "{{ 'x'|indent(1000000000, true) }}",
            "{{ 'x'.ljust(1000000000) }}",
            "{{ '%0999999999d' % 1 }}",
            "{{ '%*d'|format(1000000000, 1) }}",
            "{{ 10 ** (10 ** 9) }}",
            "{{ ('x' * 1000000)|replace('', 'y' * 1000) }}",
            "{{ ('x' * 1000000).replace('x', 'y' * 1000) }}",
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "{% set s = 'y' * 10000000 %}{% macro m() %}{% for i in range(1000) %}{{ s }}"
            "{% endfor %}{% endmacro %}{% set t = m() %}",
            # One long string held many times stands for all of its copies.
            "{% set s = 'y' * 1000000 %}{{ [s] * 1000 }}",
            "{% set s = 'y' * 1000000 %}{% set l = [s] * 10 %}{{ [l, l, l, l] }}",
            "{% set s = 'y' * 1000000 %}{{ range(100000)|join(s) }}",
            "{% set s = 'y' * 1000000 %}{{ s.join(range(100)|map('string')|list) }}",
            "{% set s = 'y' * 1000000 %}{{ ('%s' * 100) % (([s] * 100)|list|first,) }}",
            "{% set s = 'y' * 1000000 %}{{ '%(a)s%(a)s%(a)s' * 10 % {'a': s} }}",
            "{% set s = 'y' * 1000000 %}{{ ('{0}' * 100).format(s) }}",
            "{% set s = 'y' * 1000000 %}{{ ('{a}' * 100).format_map({'a': s}) }}",
            "{% set s = 'y' * 1000000 %}{{ '%s%s%s'|format(s, s, s) * 10 }}",
            "{{ ('a\\n' * 4000000)|indent(100) }}",
            "{{ ('a\\n' * 1000000)|indent('x' * 1000) }}",
            "{{ ('a' * 1000000)|wordwrap(1, wrapstring='x' * 1000) }}",
            "{{ ('\\t' * 1000000).expandtabs(1000) }}",
        ],
    )
    def test_nothing_larger_than_the_budget_is_built(self, source: str) -> None:
        started = time.monotonic()
        assert jinja_budget_error(source).kind == "size"
        assert time.monotonic() - started < 2.0

    def test_lipsum_is_not_offered(self) -> None:
        with pytest.raises(TemplateError, match="lipsum"):
            JinjaChatTemplate("{{ lipsum(1000000) }}").render(HELLO)

    def test_one_budget_covers_every_render_in_its_scope(self) -> None:
        template = JinjaChatTemplate("{% for i in range(600) %}{% endfor %}")
        with metered(RenderBudget(max_steps=1_000)):
            template.render(HELLO)
            with pytest.raises(TemplateBudgetError):
                template.render(HELLO)
        with metered(RenderBudget(max_steps=1_000)):
            template.render(HELLO)  # a new scope, a new budget

    def test_recursion_is_a_template_error(self) -> None:
        with pytest.raises(TemplateError, match="nests too deeply"):
            JinjaChatTemplate("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").render(HELLO)

    def test_ordinary_templates_render_as_before(self) -> None:
        source = (
            "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}"
            "{{ '%s!' % 'x' }}{{ 'ab' * 2 }}{% endfor %}{% if add_generation_prompt %}<model>"
            "{% endif %}"
        )
        with metered(RenderBudget(max_steps=100)):
            text = JinjaChatTemplate(source, bos_token="<s>").render(HELLO)
        assert text == "<s><user>hix!abab<model>"


class TestGo:
    def test_nested_ranges_stop_and_name_the_template(self) -> None:
        template = GoChatTemplate(NESTED_GO, label="the request's template")
        with pytest.raises(TemplateBudgetError) as caught, metered(RenderBudget(max_steps=10_000)):
            template.render(HELLO)
        assert str(caught.value) == (
            "the request's template exceeded its step budget (10000 steps)"
        )

    def test_a_doubling_variable_stops_at_the_size_budget(self) -> None:
        source = '{{ $x := "ab" }}{{ range 100 }}{{ $x = print $x $x }}{{ end }}{{ len $x }}'
        with pytest.raises(TemplateBudgetError) as caught, metered():
            GoChatTemplate(source).render(HELLO)
        assert caught.value.kind == "size"
        assert caught.value.label == "the model's chat template"

    def test_time_budget(self) -> None:
        started = time.monotonic()
        template = GoChatTemplate(NESTED_GO)
        budget = RenderBudget(seconds=0.2, max_steps=10**12)
        with pytest.raises(TemplateBudgetError) as caught, metered(budget):
            template.render(HELLO)
        assert caught.value.kind == "time"
        assert time.monotonic() - started < 2.0

    def test_unscoped_renders_get_the_default_budget(self) -> None:
        assert GoChatTemplate("{{ .Prompt }}").render(HELLO) == "hi"
        with pytest.raises(TemplateBudgetError):
            GoChatTemplate('{{ $x := "ab" }}{{ range 40 }}{{ $x = print $x $x }}{{ end }}').render(
                HELLO
            )


def test_parsing_a_go_template_is_linear_in_its_length() -> None:
    # Each unclosed "{{" made the old lexer rescan the rest: 20,000 of them took 35 s.
    started = time.monotonic()
    for source in ("{{" * 20_000, "{{ .A }}" * 20_000 + "{{" * 20_000):
        with pytest.raises(TemplateError, match="unclosed action"):
            GoChatTemplate(source)
    assert time.monotonic() - started < 2.0
    assert GoChatTemplate("a {{- .Prompt -}} b {{/* c */}}d").render(HELLO) == "ahib d"


def test_renders_run_in_threads_of_their_own_under_one_budget() -> None:
    def render() -> str:
        return threading.current_thread().name

    assert asyncio.run(render_off_loop(RenderBudget(), render)).startswith("corral-render")
    nested = GoChatTemplate(NESTED_GO)
    with pytest.raises(TemplateBudgetError):
        asyncio.run(render_off_loop(RenderBudget(max_steps=1_000), lambda: nested.render(HELLO)))


@pytest.mark.parametrize(
    "source",
    ["{{ if 1 }}" * 5000 + "{{ end }}" * 5000, "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"],
)
def test_a_deeply_nested_go_template_is_a_template_error(source: str) -> None:
    with pytest.raises(TemplateError, match="nests too deeply"):
        GoChatTemplate(source)


@pytest.mark.parametrize(
    "source",
    ["{% if 1 %}" * 3000 + "{% endif %}" * 3000, "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}"],
)
def test_a_deeply_nested_jinja_template_is_invalid(source: str) -> None:
    # (A model whose GGUF template is refused falls back to its template layer or format.)
    with pytest.raises(TemplateError, match="nests too deeply"):
        JinjaChatTemplate(source)
