// Jinja templates: the subset Hugging Face chat templates use, rendered byte for byte as jinja2
// renders them in transformers' environment (trim_blocks, lstrip_blocks, loop controls, the
// `generation` tag, `tojson` without HTML escaping, `raise_exception`, `strftime_now`).
//
// Supported: {{ }}, {% %}, {# #}, whitespace control (-, +); if/elif/else, for (with `if`
// filters, else, loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem,
// break/continue), set (names, tuples, namespace attributes, set blocks), macro, generation;
// literals, lists, dicts, tuples; + - * / // % ** ~, comparisons, in, not in, and, or, not,
// a if b else c, indexing, slices, attributes, calls; the filters and tests listed in
// docs/recipes.md ("Chat templates"), and str/dict methods templates call. What is outside the
// subset (include, extends, block, call, filter blocks, raw, recursive loops, unknown filters,
// tests or methods) is an error naming the construct and its line:column.
#pragma once
#include <memory>
#include <string>

#include "common/tokenizer/jinja_value.h"

namespace tiller::jinja {

struct Program;  // the parsed template (common/tokenizer/jinja.cpp)

class Template {
 public:
  // Parses `source`; throws tiller::Error "WHERE:LINE:COL: what" when it is not valid Jinja or
  // uses what this renderer does not support. `where` names the template in messages.
  Template(const std::string& source, std::string where);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `context` (a dict of global variables); throws tiller::Error
  // "WHERE:LINE:COL: what" on a template error (raise_exception, an undefined value used in
  // arithmetic, a type error).
  std::string render(const Value& context) const;

  const std::string& where() const { return where_; }

 private:
  std::string where_;
  std::string source_;  // as parsed (newlines normalised), for line:column in render errors
  std::unique_ptr<Program> program_;
};

}  // namespace tiller::jinja
