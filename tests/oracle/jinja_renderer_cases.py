#!/usr/bin/env python3
"""Writes tests/oracle/jinja_renderer_cases.json: one template per construct of the Jinja subset
Tiller renders, with what jinja2 (in transformers' chat-template environment,
chat_template_oracle.environment) renders for it against one context. tests/jinja_test.cpp renders
every case with Tiller's renderer and compares byte for byte. Run it again after adding a case:
    python3 tests/oracle/jinja_renderer_cases.py
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from chat_template_oracle import environment  # noqa: E402

env = environment()
ctx = {"xs": [3, 1, 2], "s": "  Hello World  ", "d": {"b": 2, "a": 1}, "n": 7, "f": 2.5, "none": None,
       "t": True, "msgs": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "bye"}],
       "u": "héllo wörld", "empty": [], "nested": {"function": {"name": "f", "arguments": {"x": 1, "y": [1.5, "z", None, True]}}}}
cases = [
 ("text only", "plain text"),
 ("output", "{{ 'a' }}{{ n }}{{ f }}{{ none }}{{ t }}{{ xs }}{{ d }}"),
 ("undefined prints empty", "[{{ missing }}][{{ d.missing }}][{{ xs[10] }}]"),
 ("comment", "a{# note #}b"),
 ("whitespace control", "a  {{- 'b' -}}  c\n  {%- if t %} d {% endif -%}  \n e"),
 ("trim_blocks", "{% if t %}\nyes\n{% endif %}\nafter"),
 ("lstrip_blocks", "<\n    {% if t %}\n    in\n    {% endif %}\n>"),
 ("lstrip keeps text before tag", "x  {% if t %}y{% endif %}"),
 ("plus disables lstrip", "<\n    {%+ if t %}in{% endif %}>"),
 ("comment trims", "a\n  {# c #}\nb"),
 ("for loop vars", "{% for x in xs %}{{ loop.index0 }}{{ loop.index }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}"),
 ("for filter", "{% for m in msgs if m.role == 'user' %}{{ loop.index }}:{{ m.content }}/{{ loop.length }} {% endfor %}"),
 ("for else", "{% for x in empty %}x{% else %}none{% endfor %}"),
 ("for unpack items", "{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}"),
 ("for over dict and string", "{% for k in d %}{{ k }}{% endfor %}|{% for c in 'abc' %}{{ c }}-{% endfor %}"),
 ("previtem nextitem", "{% for x in xs %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }} {% endfor %}"),
 ("break continue", "{% for x in [1,2,3,4,5] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
 ("if elif else", "{% for x in [1,2,3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %} {% endfor %}"),
 ("set and scope", "{% set a = 1 %}{% for x in xs %}{% set a = x %}{% endfor %}{{ a }}"),
 ("namespace", "{% set ns = namespace(total=0, seen=false) %}{% for x in xs %}{% set ns.total = ns.total + x %}{% endfor %}{{ ns.total }}{{ ns.seen }}"),
 ("set tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}"),
 ("set block", "{% set block %}x{{ n }}y{% endset %}[{{ block }}]"),
 ("macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', punct='?') }}"),
 ("arithmetic", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 1.5 + 1 }} {{ 10 - -2 }}"),
 ("concat", "{{ 'a' ~ 1 ~ none ~ missing }} {{ 'x' + 'y' }} {{ [1] + [2] }} {{ 'ab' * 3 }}"),
 ("comparisons", "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 1 != 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 5 }}"),
 ("logic", "{{ true and false }} {{ true or false }} {{ not true }} {{ none or 'fb' }} {{ 0 and 'x' }} {{ 'v' if t else 'w' }} {{ 'v' if not t else 'w' }}[{{ 'v' if false }}]"),
 ("in", "{{ 'ell' in 'hello' }} {{ 2 in xs }} {{ 'a' in d }} {{ 'z' not in d }} {{ 'x' in missing }}"),
 ("indexing and slicing", "{{ xs[0] }}{{ xs[-1] }} {{ xs[1:] }} {{ xs[:-1] }} {{ xs[::-1] }} {{ msgs[1:][0].content }} {{ u[1:4] }} {{ u[-1] }} {{ d['a'] }} {{ nested.function.name }}"),
 ("tests", "{{ n is defined }} {{ missing is defined }} {{ missing is undefined }} {{ none is none }} {{ s is string }} {{ d is mapping }} {{ xs is iterable }} {{ xs is sequence }} {{ n is number }} {{ t is true }} {{ t is false }} {{ n is not none }} {{ n is odd }} {{ 6 is divisibleby 3 }} {{ 'user' is equalto 'user' }}"),
 ("string methods", "[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}] {{ s.strip().startswith('Hello') }} {{ 'a,b,c'.split(',') }} {{ ' a  b '.split() }} {{ 'abc'.upper() }} {{ 'ABC'.lower() }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ 'aXbX'.replace('X', '-') }} {{ '-'.join(['a','b']) }} {{ 'xxhixx'.strip('x') }} {{ 'abc'.endswith(('c','z')) }}"),
 ("dict methods", "{{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('z', 5) }} {{ d.get('z') }}"),
 ("filters", "[{{ s | trim }}] {{ xs | length }} {{ 'ab' | upper }} {{ 'AB' | lower }} {{ 'ab cd' | capitalize }} {{ missing | default('dflt') }} {{ '' | default('e', true) }} {{ xs | first }} {{ xs | last }} {{ xs | join('-') }} {{ 'aab' | replace('a', 'c') }} {{ n | string }} {{ 'ab' | list }} {{ d | items | list }} {{ u | length }} {{ xs | reverse | list }} {{ '3' | int + 1 }} {{ -3 | abs }}"),
 ("selectattr rejectattr map", "{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }} {{ msgs | rejectattr('role', 'equalto', 'user') | list | length }} {{ msgs | selectattr('missing', 'undefined') | list | length }} {{ msgs | map(attribute='role') | list }}"),
 ("tojson", "{{ nested | tojson }}\n{{ nested | tojson(indent=2) }}\n{{ u | tojson }} {{ 'q\"\\\\' | tojson }} {{ f | tojson }} {{ none | tojson }}"),
 ("literals", "{{ [1, 'a', [2]] }} {{ {'k': 'v', 'n': 1} }} {{ (1, 2) }} {{ (1,) }} {{ d.items() | list }} {{ 'a' 'b' }} {{ \"dq\\n\\t'\" }} {{ '\\u00e9' }} {{ 1_000 }} {{ 1e3 }} {{ 0.1 }}"),
 ("range", "{% for i in range(3) %}{{ i }}{% endfor %} {% for i in range(1, 10, 4) %}{{ i }}{% endfor %}"),
 ("generation tag", "A{% generation %}B{{ n }}{% endgeneration %}C"),
 ("float printing", "{{ 1.0 }} {{ 1e16 }} {{ 1.5e-5 }} {{ 123456789.125 }} {{ 0.0001 }} {{ 3 / 4 }} {{ 1e-4 }} {{ 2.0 * 3 }}"),
 ("unicode passes through", "{{ u }} {{ u | upper }} ✓ {{ '日本' ~ '語' }}"),
 ("filters bind tighter than plus", "{{ 'a' + s | trim + 'b' }} {{ not missing is defined }}"),
 ("loop in nested loop", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ b }}{% endfor %}{{ loop.index }}|{% endfor %}"),
 ("trailing newline dropped", "line\n"),
 ("crlf normalised", "a\r\nb\r\n{% if t %}\r\nc{% endif %}"),
]
out = []
for name, src in cases:
    try:
        text = env.from_string(src).render(**ctx)
    except Exception as e:
        print("FAIL", name, e); continue
    out.append({"name": name, "template": src, "expected": text})
import jinja2  # noqa: E402
with open(os.path.join(HERE, "jinja_renderer_cases.json"), "w", encoding="utf-8") as f:
    json.dump({"jinja2": jinja2.__version__, "context": ctx, "cases": out}, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(len(out), "cases")
