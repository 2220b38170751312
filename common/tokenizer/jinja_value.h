// Values of the Jinja renderer (common/tokenizer/jinja.h): Python's None, bool, int, float, str,
// list and dict, jinja2's Undefined, and callables; printed as Python prints them, and written as
// JSON the way transformers' `tojson` filter writes them (json.dumps, non-ASCII kept).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace tiller::jinja {

class Value;
struct Dict;
using List = std::vector<Value>;

// Arguments of a call: positional, then keyword (name=value) in the order written.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// A built-in function, a bound method or a macro. Throws std::runtime_error on bad arguments;
// the evaluator adds the position.
using Function = std::function<Value(const CallArgs&)>;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction };

  Value() = default;  // undefined
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value real(double d);
  static Value string(std::string s);
  static Value list(List items);
  static Value tuple(List items);  // a list that prints as Python prints a tuple
  static Value dict(std::shared_ptr<Dict> d);
  static Value empty_dict();
  static Value function(Function f, std::string name);
  // An undefined value that remembers what was looked up, for error messages.
  static Value undefined(std::string hint);
  // JSON (as tokenizer_config.json and data hold it) to a value; objects keep their key order.
  static Value from_json(const nlohmann::json& json);
  static Value from_json(const nlohmann::ordered_json& json);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_number() const {
    return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool;
  }
  bool is_function() const { return kind_ == Kind::kFunction; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }  // bools and ints
  double as_double() const { return kind_ == Kind::kFloat ? real_ : static_cast<double>(int_); }
  const std::string& as_string() const { return *string_; }
  const List& as_list() const { return *list_; }
  List& mutable_list() const { return *list_; }
  Dict& as_dict() const { return *dict_; }
  const Function& as_function() const { return *function_; }
  const std::string& name() const { return *string_; }  // a function's name or undefined's hint

  // Python's truth: None, undefined, False, 0, "", [] and {} are false.
  bool truthy() const;
  // Python's str(): strings as they are, the rest as repr; undefined prints as "".
  std::string str() const;
  // Python's repr() (strings quoted as Python quotes them).
  std::string repr() const;
  // json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=false): indent < 0 is none.
  std::string to_json(int indent = -1) const;
  // The type name jinja2 puts in its messages ("str", "list", "dict", "int" ...).
  std::string type_name() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool tuple_ = false;
  int64_t int_ = 0;
  double real_ = 0;
  std::shared_ptr<std::string> string_;  // string, function name or undefined hint
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> function_;
};

// A dict with string keys in insertion order (Python's dict), or a namespace() object, whose
// attributes `set ns.x = ...` may assign.
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;

  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value value);
};

// Python's ==: numbers by value (True == 1), lists and dicts element by element.
bool equal(const Value& a, const Value& b);

// Python's repr() of a float: the shortest text that reads back as the same double.
std::string python_float_repr(double d);

// Code points of UTF-8 text (malformed bytes count as one code point each, as Latin-1), and back.
std::u32string utf8_to_code_points(const std::string& text);
std::string code_points_to_utf8(const std::u32string& code_points);

}  // namespace tiller::jinja
