// The Jinja renderer: every construct against what jinja2 renders (tests/oracle/
// jinja_renderer_cases.json, written by jinja2 in transformers' environment), and each error with
// the construct it names and its line:column.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/tokenizer/jinja.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;
using jinja::Template;
using jinja::Value;

namespace {

std::string render(const std::string& source, const Value& context = Value::empty_dict()) {
  return Template(source, "t").render(context);
}

std::string render_error(const std::string& source, const Value& context = Value::empty_dict()) {
  return test::error_of([&] { render(source, context); });
}

}  // namespace

TEST(Jinja, EveryConstructRendersAsJinja2RendersIt) {
  const auto cases = nlohmann::ordered_json::parse(
      read_file(std::string(TILLER_SOURCE_DIR) + "/tests/oracle/jinja_renderer_cases.json"));
  const Value context = Value::from_json(cases["context"]);
  ASSERT_GE(cases["cases"].size(), 40u);
  for (const auto& c : cases["cases"]) {
    const std::string name = c["name"];
    std::string got;
    try {
      got = render(c["template"].get<std::string>(), context);
    } catch (const Error& e) {
      got = std::string("error: ") + e.what();
    }
    EXPECT_EQ(got, c["expected"].get<std::string>())
        << name << ": " << c["template"].get<std::string>();
  }
}

TEST(Jinja, UndefinedValuesPrintEmptyAndAreFalseButFailInArithmetic) {
  EXPECT_EQ(render("[{{ nothing }}]{% if nothing %}yes{% else %}no{% endif %}"), "[]no");
  EXPECT_EQ(render("{% for x in nothing %}x{% endfor %}{{ nothing | length }}"), "0");
  EXPECT_EQ(render_error("{{ nothing + 1 }}"), "t:1:12: 'nothing' is undefined");
  EXPECT_EQ(render_error("{{ nothing.attr }}"), "t:1:11: 'nothing' is undefined");
}

TEST(Jinja, TrimAndLstripBlocksShapeTheTextAroundTags) {
  // trim_blocks eats the newline after a block tag; lstrip_blocks the indentation before one.
  EXPECT_EQ(
      render("{% for x in [1, 2] %}\n  {% if x %}\n    {{ x }}\n  {% endif %}\n{% endfor %}\n"),
      "    1\n    2\n");
  // {{ }} is not a block: the indentation before it stays.
  EXPECT_EQ(render("  {{ 'x' }}\n"), "  x");
  EXPECT_EQ(render("a \n {%- if true -%} \n b {%+ if true %}c{% endif %}{% endif %}"), "ab c");
}

TEST(Jinja, LoopScopesKeepSetsInsideWhileNamespacesCarryOut) {
  EXPECT_EQ(render("{% set a = 0 %}{% for x in [1, 2] %}{% set a = a + x %}{% endfor %}{{ a }}"),
            "0");
  EXPECT_EQ(render("{% set ns = namespace(a=0) %}{% for x in [1, 2] %}{% set ns.a = ns.a + x %}"
                   "{% endfor %}{{ ns.a }}"),
            "3");
}

TEST(Jinja, ErrorsNameTheConstructAndItsLineAndColumn) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{% include 'other.jinja' %}", "t:1:4: unsupported tag 'include'"},
      {"text\n{% extends 'base' %}", "t:2:4: unsupported tag 'extends'"},
      {"{% raw %}x{% endraw %}", "t:1:4: unsupported tag 'raw'"},
      {"line one\n  {{ x | frobnicate }}", "t:2:10: unsupported filter 'frobnicate'"},
      {"{{ 1 is prime }}", "t:1:9: unsupported test 'prime'"},
      {"{% for x in xs recursive %}{% endfor %}", "t:1:16: unsupported recursive for loop"},
      {"{% if true %}never closed", "t:1:26: expected 'endif' before the end of the template"},
      {"{% endif %}", "t:1:4: 'endif' without its opening tag"},
      {"{{ 'open }}", "t:1:4: string literal is never closed"},
      {"{{ 1 + }}", "t:1:8: unexpected '}}'"},
      {"{{ a\n  b }}", "t:2:3: expected '}}', got 'b'"},
      {"{{ x ! y }}", "t:1:6: unexpected character '!'"},
      {"{# no end", "t:1:1: comment {# is never closed with #}"},
      {"{{ f(*args) }}", "t:1:6: unsupported *args or **kwargs in a call"},
      {"a\nb {{ 'x' % 2 }}", "t:2:10: unsupported %-formatting of a string"},
      {"{{ 'a' + 1 }}", "t:1:8: unsupported operand type(s) for +: 'str' and 'int'"},
      {"{{ 5 | length }}", "t:1:8: object of type 'int' has no len()"},
      {"\n\n   {{ raise_exception('roles must alternate') }}",
       "t:3:7: the template raises: roles must alternate"},
      {"{% set n = 1 %}{% set n.a = 2 %}",
       "t:1:19: cannot assign attribute 'a' of 'n' (not a namespace())"},
      {"{% break %}", "t:1:4: 'break' outside a for loop"},
      {"{{ 'ab'.nomethod() }}", "t:1:8: 'str object' has no attribute 'nomethod'"},
  };
  for (const auto& [source, expected] : cases) {
    const std::string got = render_error(source);
    EXPECT_NE(got.find(expected), std::string::npos) << source << "\n  got: " << got;
  }
}

TEST(Jinja, AnErrorInAMacroOrLoopPointsAtItsOwnLine) {
  const std::string source =
      "{% macro turn(m) %}\n"
      "{{ m.content + 1 }}\n"
      "{% endmacro %}\n"
      "{% for m in messages %}{{ turn(m) }}{% endfor %}";
  Value context = Value::from_json(nlohmann::json{{"messages", {{{"content", "hi"}}}}});
  EXPECT_EQ(render_error(source, context),
            "t:2:14: unsupported operand type(s) for +: 'str' and 'int'");
}

TEST(Jinja, ValuesPrintAndSerialiseAsPythonDoes) {
  EXPECT_EQ(jinja::python_float_repr(0.1), "0.1");
  EXPECT_EQ(jinja::python_float_repr(1e16), "1e+16");
  EXPECT_EQ(jinja::python_float_repr(1e15), "1000000000000000.0");
  EXPECT_EQ(jinja::python_float_repr(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(
      Value::from_json(nlohmann::json::parse(R"({"a": [1, "x\n", null, true, 2.0]})")).to_json(),
      R"({"a": [1, "x\n", null, true, 2.0]})");
  EXPECT_EQ(Value::string("it's").repr(), "\"it's\"");
}
