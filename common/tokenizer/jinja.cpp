#include "common/tokenizer/jinja.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <map>
#include <stdexcept>
#include <unordered_map>

#include <unicode/uchar.h>

#include "common/util/error.h"

namespace tiller::jinja {

namespace {

// ---------------------------------------------------------------------------------------------
// Positions and errors
// ---------------------------------------------------------------------------------------------

// A failure at a byte offset of the source; Template turns it into "WHERE:LINE:COL: message".
struct Failure : std::runtime_error {
  Failure(size_t offset_, const std::string& message)
      : std::runtime_error(message), offset(offset_) {}
  size_t offset;
};

[[noreturn]] void fail(size_t offset, const std::string& message) {
  throw Failure(offset, message);
}

std::string line_column(const std::string& source, size_t offset) {
  size_t line = 1, column = 1;
  for (size_t i = 0; i < offset && i < source.size(); ++i) {
    if (source[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return std::to_string(line) + ":" + std::to_string(column);
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// Python's str.isspace for one code point.
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

// ---------------------------------------------------------------------------------------------
// Lexer: text and tags, with jinja2's whitespace control under trim_blocks and lstrip_blocks
// ---------------------------------------------------------------------------------------------

enum class Tok {
  kText,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEnd
};

struct Token {
  Tok kind;
  std::string text;  // text, name, operator, or a string literal's value
  size_t offset;
  int64_t integer = 0;
  double real = 0;
};

// Python's "unicode-escape" decoding of a string literal's body, as jinja2 reads literals.
std::string unescape(const std::string& body, size_t offset) {
  std::u32string out;
  const std::u32string in = utf8_to_code_points(body);
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != U'\\' || i + 1 == in.size()) {
      out.push_back(in[i]);
      continue;
    }
    const char32_t c = in[++i];
    auto hex = [&](size_t digits) {
      uint32_t code = 0;
      for (size_t k = 0; k < digits; ++k) {
        if (i + 1 + k >= in.size())
          fail(offset, "truncated \\x, \\u or \\U escape in a string literal");
        const char32_t d = in[i + 1 + k];
        uint32_t v = 0;
        if (d >= '0' && d <= '9')
          v = d - '0';
        else if (d >= 'a' && d <= 'f')
          v = d - 'a' + 10;
        else if (d >= 'A' && d <= 'F')
          v = d - 'A' + 10;
        else
          fail(offset, "malformed \\x, \\u or \\U escape in a string literal");
        code = code * 16 + v;
      }
      i += digits;
      out.push_back(code);
    };
    switch (c) {
      case '\n':
        break;
      case '\\':
      case '\'':
      case '"':
        out.push_back(c);
        break;
      case 'a':
        out.push_back(7);
        break;
      case 'b':
        out.push_back(8);
        break;
      case 'f':
        out.push_back(12);
        break;
      case 'n':
        out.push_back(10);
        break;
      case 'r':
        out.push_back(13);
        break;
      case 't':
        out.push_back(9);
        break;
      case 'v':
        out.push_back(11);
        break;
      case 'x':
        hex(2);
        break;
      case 'u':
        hex(4);
        break;
      case 'U':
        hex(8);
        break;
      case 'N':
        fail(offset, "unsupported \\N{...} escape in a string literal");
      default:
        if (c >= '0' && c <= '7') {
          uint32_t code = c - '0';
          for (int k = 0; k < 2 && i + 1 < in.size() && in[i + 1] >= '0' && in[i + 1] <= '7'; ++k)
            code = code * 8 + (in[++i] - '0');
          out.push_back(code);
        } else {
          out.push_back(U'\\');
          out.push_back(c);
        }
    }
  }
  return code_points_to_utf8(out);
}

class Lexer {
 public:
  explicit Lexer(const std::string& source) : src_(source) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      const size_t start = find_tag(pos);
      if (start == std::string::npos) {
        emit_text(src_.substr(pos), pos);
        break;
      }
      const char kind = src_[start + 1];  // '{', '%' or '#'
      const char sign = start + 2 < src_.size() ? src_[start + 2] : '\0';
      std::string text = src_.substr(pos, start - pos);
      if (sign == '-') {
        text.erase(
            std::find_if(text.rbegin(), text.rend(), [](char c) { return !is_space(c); }).base(),
            text.end());
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks: blocks and comments
        const size_t line_start = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        if ((line_start > 0 || line_starting) && line_start < text.size() &&
            std::all_of(text.begin() + static_cast<std::ptrdiff_t>(line_start), text.end(),
                        [](char c) {
                          return c == ' ' || c == '\t' || c == '\f' || c == '\v' || c == '\r';
                        }))
          text.erase(line_start);
      }
      emit_text(text, pos);
      size_t inner = start + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      if (kind == '#') {
        const size_t close = src_.find("#}", inner);
        if (close == std::string::npos) fail(start, "comment {# is never closed with #}");
        pos = after_end(close, close + 2, /*trim=*/true, &line_starting);
        continue;
      }
      const bool block = kind == '%';
      tokens_.push_back({block ? Tok::kBlockBegin : Tok::kVarBegin, "", start});
      if (block) check_raw(inner);
      pos = lex_tag(inner, block, start, &line_starting);
    }
    tokens_.push_back({Tok::kEnd, "", src_.size()});
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1))
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))
        return i;
    return std::string::npos;
  }

  void emit_text(const std::string& text, size_t offset) {
    if (!text.empty()) tokens_.push_back({Tok::kText, text, offset});
  }

  // The end marker spans [marker, end): '-' before it strips all whitespace after, '+' keeps
  // the newline, and otherwise trim_blocks eats one newline after a block or comment.
  size_t after_end(size_t marker, size_t end, bool trim, bool* line_starting) {
    const char before = marker > 0 ? src_[marker - 1] : '\0';
    size_t pos = end;
    if (before == '-') {
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
    } else if (trim && before != '+' && pos < src_.size() && src_[pos] == '\n') {
      ++pos;
    }
    *line_starting = pos > 0 && src_[pos - 1] == '\n';
    return pos;
  }

  void check_raw(size_t inner) const {
    size_t p = inner;
    while (p < src_.size() && is_space(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") == 0 &&
        (p + 3 >= src_.size() || !isalnum(static_cast<unsigned char>(src_[p + 3]))))
      fail(p, "unsupported tag 'raw'");
  }

  size_t lex_tag(size_t pos, bool block, size_t open, bool* line_starting) {
    const char* close = block ? "%}" : "}}";
    int depth = 0;
    while (true) {
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
      if (pos >= src_.size()) fail(open, std::string("tag is never closed with ") + close);
      if (depth == 0) {
        for (const char* sign : {"-", "+", ""}) {
          const std::string marker = std::string(sign) + close;
          if (src_.compare(pos, marker.size(), marker) == 0 && !(sign[0] == '+' && !block)) {
            tokens_.push_back({block ? Tok::kBlockEnd : Tok::kVarEnd, "", pos});
            return after_end(pos + marker.size() - 2, pos + marker.size(), block, line_starting);
          }
        }
      }
      const char c = src_[pos];
      if (isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t end = pos;
        while (end < src_.size() &&
               (isalnum(static_cast<unsigned char>(src_[end])) || src_[end] == '_'))
          ++end;
        tokens_.push_back({Tok::kName, src_.substr(pos, end - pos), pos});
        pos = end;
      } else if (isdigit(static_cast<unsigned char>(c))) {
        pos = lex_number(pos);
      } else if (c == '\'' || c == '"') {
        size_t end = pos + 1;
        while (end < src_.size() && src_[end] != c) end += src_[end] == '\\' ? 2 : 1;
        if (end >= src_.size()) fail(pos, "string literal is never closed");
        std::string body = src_.substr(pos + 1, end - pos - 1);
        // jinja2 normalises newlines in literals as in the template's text
        std::string normalised;
        for (size_t i = 0; i < body.size(); ++i) {
          if (body[i] == '\r') {
            normalised += '\n';
            if (i + 1 < body.size() && body[i + 1] == '\n') ++i;
          } else {
            normalised += body[i];
          }
        }
        tokens_.push_back({Tok::kString, unescape(normalised, pos), pos});
        pos = end + 1;
      } else {
        static const char* const kOps[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*",
                                           "/",  "%",  "~",  "|",  ".",  ",",  ":", "(", ")",
                                           "[",  "]",  "{",  "}",  "<",  ">",  "="};
        bool found = false;
        for (const char* op : kOps) {
          const size_t n = std::char_traits<char>::length(op);
          if (src_.compare(pos, n, op) == 0) {
            if (op[0] == '(' || op[0] == '[' || op[0] == '{') ++depth;
            if ((op[0] == ')' || op[0] == ']' || op[0] == '}') && depth > 0) --depth;
            tokens_.push_back({Tok::kOp, op, pos});
            pos += n;
            found = true;
            break;
          }
        }
        if (!found) fail(pos, std::string("unexpected character '") + c + "'");
      }
    }
  }

  size_t lex_number(size_t pos) {
    size_t end = pos;
    auto digits = [&] {
      while (end < src_.size() &&
             (isdigit(static_cast<unsigned char>(src_[end])) || src_[end] == '_'))
        ++end;
    };
    digits();
    bool is_float = false;
    if (end + 1 < src_.size() && src_[end] == '.' &&
        isdigit(static_cast<unsigned char>(src_[end + 1]))) {
      is_float = true;
      ++end;
      digits();
    }
    if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t e = end + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      if (e < src_.size() && isdigit(static_cast<unsigned char>(src_[e]))) {
        is_float = true;
        end = e;
        digits();
      }
    }
    std::string text = src_.substr(pos, end - pos);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    Token token{is_float ? Tok::kFloat : Tok::kInt, text, pos};
    if (is_float) {
      token.real = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      token.integer = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) fail(pos, "integer literal " + text + " does not fit in 64 bits");
    }
    tokens_.push_back(token);
    return end;
  }

  const std::string& src_;
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------------------------------------
// Syntax tree
// ---------------------------------------------------------------------------------------------

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,
    kName,
    kList,
    kDict,
    kAttr,
    kItem,
    kSlice,
    kCall,
    kFilter,
    kTest,
    kNot,
    kNeg,
    kPos,
    kBinary,
    kCond
  };
  Kind kind;
  size_t offset;
  Value value;                // literal
  std::string name;           // name, attribute, filter, test, binary operator
  std::vector<ExprPtr> args;  // operands, items, call/filter/test arguments (dict: key, value, ...)
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negated = false;  // `is not`
  bool tuple = false;    // a list written as a tuple
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind {
    kText,
    kOutput,
    kIf,
    kFor,
    kSet,
    kSetBlock,
    kMacro,
    kBreak,
    kContinue,
    kGeneration
  };
  Kind kind;
  size_t offset;
  std::string text;                  // text; set/macro name
  std::string attribute;             // set ns.attribute
  std::vector<std::string> targets;  // for / set tuple targets; macro parameter names
  std::vector<ExprPtr>
      exprs;  // output/set value; if conditions; for: iterable, filter; macro defaults
  std::vector<Body> bodies;  // if: one per condition (+ else); for: body (+ else); macro body
};

}  // namespace

struct Program {
  Body body;
};

namespace {

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Body parse_template() {
    std::string end_tag;
    Body body = parse_body({}, &end_tag);
    return body;
  }

 private:
  const Token& peek(size_t ahead = 0) const {
    return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)];
  }
  const Token& next() { return tokens_[pos_ < tokens_.size() - 1 ? pos_++ : pos_]; }
  bool is_op(const char* op, size_t ahead = 0) const {
    return peek(ahead).kind == Tok::kOp && peek(ahead).text == op;
  }
  bool is_name(const char* name, size_t ahead = 0) const {
    return peek(ahead).kind == Tok::kName && peek(ahead).text == name;
  }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case Tok::kText:
        return "text";
      case Tok::kVarBegin:
        return "'{{'";
      case Tok::kVarEnd:
        return "'}}'";
      case Tok::kBlockBegin:
        return "'{%'";
      case Tok::kBlockEnd:
        return "'%}'";
      case Tok::kEnd:
        return "the end of the template";
      case Tok::kString:
        return "a string";
      default:
        return "'" + t.text + "'";
    }
  }
  void expect_op(const char* op) {
    if (!is_op(op))
      fail(peek().offset, std::string("expected '") + op + "', got " + describe(peek()));
    next();
  }
  void expect(Tok kind, const char* what) {
    if (peek().kind != kind)
      fail(peek().offset, std::string("expected ") + what + ", got " + describe(peek()));
    next();
  }
  std::string expect_name(const char* what) {
    if (peek().kind != Tok::kName)
      fail(peek().offset, std::string("expected ") + what + ", got " + describe(peek()));
    return next().text;
  }

  // Statements up to a block tag named in `ends` (whose name is stored in *end_tag; the tag's
  // name token is consumed, its arguments are not).
  Body parse_body(const std::vector<std::string>& ends, std::string* end_tag) {
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.kind == Tok::kEnd) {
        if (!ends.empty())
          fail(t.offset, "expected '" + ends.back() + "' before the end of the template");
        return body;
      }
      if (t.kind == Tok::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->offset = t.offset;
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.kind == Tok::kVarBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kOutput;
        s->offset = t.offset;
        s->exprs.push_back(parse_expression());
        expect(Tok::kVarEnd, "'}}'");
        body.push_back(std::move(s));
      } else if (t.kind == Tok::kBlockBegin) {
        next();
        const Token& name = peek();
        if (name.kind != Tok::kName)
          fail(name.offset, "expected a tag name, got " + describe(name));
        if (std::find(ends.begin(), ends.end(), name.text) != ends.end()) {
          *end_tag = name.text;
          next();
          return body;
        }
        body.push_back(parse_tag());
      } else {
        fail(t.offset, "unexpected " + describe(t));
      }
    }
  }

  std::unique_ptr<Stmt> parse_tag() {
    if (++depth_ > kMaxDepth) fail(peek().offset, "tags or expressions nested more than 200 deep");
    struct Leave {
      int& depth;
      ~Leave() { --depth; }
    } leave{depth_};
    const Token tag = next();
    auto s = std::make_unique<Stmt>();
    s->offset = tag.offset;
    const std::string& name = tag.text;
    if (name == "if") {
      s->kind = Stmt::Kind::kIf;
      std::string end;
      s->exprs.push_back(parse_expression());
      expect(Tok::kBlockEnd, "'%}'");
      while (true) {
        s->bodies.push_back(parse_body({"elif", "else", "endif"}, &end));
        if (end == "elif") {
          s->exprs.push_back(parse_expression());
          expect(Tok::kBlockEnd, "'%}'");
        } else if (end == "else") {
          expect(Tok::kBlockEnd, "'%}'");
          s->bodies.push_back(parse_body({"endif"}, &end));
          break;
        } else {
          break;
        }
      }
    } else if (name == "for") {
      s->kind = Stmt::Kind::kFor;
      s->targets.push_back(expect_name("a loop variable"));
      while (is_op(",")) {
        next();
        s->targets.push_back(expect_name("a loop variable"));
      }
      if (!is_name("in")) fail(peek().offset, "expected 'in', got " + describe(peek()));
      next();
      s->exprs.push_back(parse_expression(/*allow_condition=*/false));
      if (is_name("if")) {
        next();
        s->exprs.push_back(parse_expression());
      }
      if (is_name("recursive")) fail(peek().offset, "unsupported recursive for loop");
      expect(Tok::kBlockEnd, "'%}'");
      std::string end;
      s->bodies.push_back(parse_body({"else", "endfor"}, &end));
      if (end == "else") {
        expect(Tok::kBlockEnd, "'%}'");
        s->bodies.push_back(parse_body({"endfor"}, &end));
      }
    } else if (name == "set") {
      const std::string target = expect_name("a variable name");
      if (is_op(".")) {
        next();
        s->text = target;
        s->attribute = expect_name("an attribute name");
      } else {
        s->targets.push_back(target);
        while (is_op(",")) {
          next();
          s->targets.push_back(expect_name("a variable name"));
        }
      }
      if (is_op("=")) {
        next();
        s->kind = Stmt::Kind::kSet;
        s->exprs.push_back(parse_tuple_or_expression());
      } else {
        if (s->targets.size() != 1) fail(peek().offset, "expected '=' after the names of a set");
        if (is_op("|")) fail(peek().offset, "unsupported filter on a set block");
        s->kind = Stmt::Kind::kSetBlock;
        expect(Tok::kBlockEnd, "'%}'");
        std::string end;
        s->bodies.push_back(parse_body({"endset"}, &end));
      }
    } else if (name == "macro") {
      s->kind = Stmt::Kind::kMacro;
      s->text = expect_name("a macro name");
      expect_op("(");
      while (!is_op(")")) {
        s->targets.push_back(expect_name("a parameter name"));
        if (is_op("=")) {
          next();
          s->exprs.push_back(parse_expression());
        } else {
          s->exprs.push_back(nullptr);
        }
        if (!is_op(")")) expect_op(",");
      }
      next();
      expect(Tok::kBlockEnd, "'%}'");
      std::string end;
      s->bodies.push_back(parse_body({"endmacro"}, &end));
      if (peek().kind == Tok::kName) next();  // {% endmacro name %}
    } else if (name == "break" || name == "continue") {
      s->kind = name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
    } else if (name == "generation") {
      s->kind = Stmt::Kind::kGeneration;
      expect(Tok::kBlockEnd, "'%}'");
      std::string end;
      s->bodies.push_back(parse_body({"endgeneration"}, &end));
    } else if (name == "elif" || name == "else" || name == "endif" || name == "endfor" ||
               name == "endset" || name == "endmacro" || name == "endgeneration") {
      fail(tag.offset, "'" + name + "' without its opening tag");
    } else {
      fail(tag.offset, "unsupported tag '" + name + "'");
    }
    expect(Tok::kBlockEnd, "'%}'");
    return s;
  }

  ExprPtr make(Expr::Kind kind, size_t offset) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->offset = offset;
    return e;
  }

  // `a, b` (a tuple, as a list) or one expression.
  ExprPtr parse_tuple_or_expression() {
    ExprPtr first = parse_expression();
    if (!is_op(",")) return first;
    auto list = make(Expr::Kind::kList, first->offset);
    list->tuple = true;
    list->args.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (is_op(")")) break;  // (a,)
      list->args.push_back(parse_expression());
    }
    return list;
  }

  ExprPtr parse_expression(bool allow_condition = true) {
    ExprPtr e = parse_or();
    if (allow_condition && is_name("if")) {
      const size_t offset = next().offset;
      auto cond = make(Expr::Kind::kCond, offset);
      ExprPtr test = parse_or();
      ExprPtr otherwise;
      if (is_name("else")) {
        next();
        otherwise = parse_expression();
      }
      cond->args.push_back(std::move(e));
      cond->args.push_back(std::move(test));
      cond->args.push_back(std::move(otherwise));
      return cond;
    }
    return e;
  }

  ExprPtr binary(const std::string& op, ExprPtr left, ExprPtr right, size_t offset) {
    auto e = make(Expr::Kind::kBinary, offset);
    e->name = op;
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const size_t offset = next().offset;
      e = binary("or", std::move(e), parse_and(), offset);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const size_t offset = next().offset;
      e = binary("and", std::move(e), parse_not(), offset);
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const size_t offset = next().offset;
      auto e = make(Expr::Kind::kNot, offset);
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    ExprPtr chain;  // a < b < c is (a < b) and (b < c)
    while (true) {
      std::string op;
      const size_t offset = peek().offset;
      if (peek().kind == Tok::kOp &&
          (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == ">" ||
           peek().text == "<=" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      ExprPtr right = parse_math1();
      if (!chain) {
        chain = binary(op, std::move(e), std::move(right), offset);
      } else {
        // the middle operand is evaluated again; templates compare plain values
        const Expr* middle = chain->kind == Expr::Kind::kBinary && chain->name == "and"
                                 ? chain->args[1]->args[1].get()
                                 : chain->args[1].get();
        auto copy = clone(*middle);
        chain = binary("and", std::move(chain),
                       binary(op, std::move(copy), std::move(right), offset), offset);
      }
    }
    return chain ? std::move(chain) : std::move(e);
  }

  static ExprPtr clone(const Expr& e) {
    auto c = std::make_unique<Expr>();
    c->kind = e.kind;
    c->offset = e.offset;
    c->value = e.value;
    c->name = e.name;
    c->negated = e.negated;
    c->tuple = e.tuple;
    for (const auto& a : e.args) c->args.push_back(a ? clone(*a) : nullptr);
    for (const auto& kw : e.kwargs) c->kwargs.emplace_back(kw.first, clone(*kw.second));
    return c;
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& op = next();
      e = binary(op.text, std::move(e), parse_concat(), op.offset);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const size_t offset = next().offset;
      e = binary("~", std::move(e), parse_math2(), offset);
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& op = next();
      e = binary(op.text, std::move(e), parse_pow(), op.offset);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const size_t offset = next().offset;
      e = binary("**", std::move(e), parse_unary(true), offset);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    // Nesting recurses here (brackets, unary minus, filter arguments): bounded, not the stack's.
    if (++depth_ > kMaxDepth) fail(peek().offset, "tags or expressions nested more than 200 deep");
    struct Leave {
      int& depth;
      ~Leave() { --depth; }
    } leave{depth_};
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& op = next();
      e = make(op.text == "-" ? Expr::Kind::kNeg : Expr::Kind::kPos, op.offset);
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_postfix(parse_primary());
    }
    if (with_filter) e = parse_filters(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    if (t.kind == Tok::kName) {
      next();
      auto e = make(Expr::Kind::kLiteral, t.offset);
      if (t.text == "true" || t.text == "True") {
        e->value = Value::boolean(true);
      } else if (t.text == "false" || t.text == "False") {
        e->value = Value::boolean(false);
      } else if (t.text == "none" || t.text == "None") {
        e->value = Value::none();
      } else {
        e->kind = Expr::Kind::kName;
        e->name = t.text;
      }
      return e;
    }
    if (t.kind == Tok::kString) {
      std::string text;
      const size_t offset = t.offset;
      while (peek().kind == Tok::kString) text += next().text;  // adjacent literals join
      auto e = make(Expr::Kind::kLiteral, offset);
      e->value = Value::string(text);
      return e;
    }
    if (t.kind == Tok::kInt || t.kind == Tok::kFloat) {
      next();
      auto e = make(Expr::Kind::kLiteral, t.offset);
      e->value = t.kind == Tok::kInt ? Value::integer(t.integer) : Value::real(t.real);
      return e;
    }
    if (is_op("(")) {
      next();
      if (is_op(")")) {
        next();
        auto e = make(Expr::Kind::kList, t.offset);
        e->tuple = true;
        return e;
      }
      ExprPtr e = parse_tuple_or_expression();
      if (is_op(",")) {  // (a,) is a tuple of one
        next();
        if (!e->tuple) {
          auto one = make(Expr::Kind::kList, e->offset);
          one->tuple = true;
          one->args.push_back(std::move(e));
          e = std::move(one);
        }
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      next();
      auto e = make(Expr::Kind::kList, t.offset);
      while (!is_op("]")) {
        e->args.push_back(parse_expression());
        if (!is_op("]")) expect_op(",");
      }
      next();
      return e;
    }
    if (is_op("{")) {
      next();
      auto e = make(Expr::Kind::kDict, t.offset);
      while (!is_op("}")) {
        e->args.push_back(parse_expression());
        expect_op(":");
        e->args.push_back(parse_expression());
        if (!is_op("}")) expect_op(",");
      }
      next();
      return e;
    }
    fail(t.offset, "unexpected " + describe(t));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        const size_t offset = next().offset;
        auto attr = make(Expr::Kind::kAttr, offset);
        if (peek().kind == Tok::kInt) {  // x.0 is x[0]
          attr->kind = Expr::Kind::kItem;
          auto index = make(Expr::Kind::kLiteral, peek().offset);
          index->value = Value::integer(next().integer);
          attr->args.push_back(std::move(e));
          attr->args.push_back(std::move(index));
        } else {
          attr->name = expect_name("an attribute name");
          attr->args.push_back(std::move(e));
        }
        e = std::move(attr);
      } else if (is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr e) {
    const size_t offset = next().offset;  // [
    ExprPtr parts[3];
    int colons = 0;
    while (!is_op("]")) {
      if (is_op(":")) {
        next();
        if (++colons > 2) fail(peek().offset, "a slice takes at most start:stop:step");
        continue;
      }
      if (parts[colons]) fail(peek().offset, "expected ']' or ':', got " + describe(peek()));
      parts[colons] = parse_expression();
    }
    next();
    if (colons == 0) {
      if (!parts[0]) fail(offset, "empty subscript []");
      auto item = make(Expr::Kind::kItem, offset);
      item->args.push_back(std::move(e));
      item->args.push_back(std::move(parts[0]));
      return item;
    }
    auto slice = make(Expr::Kind::kSlice, offset);
    slice->args.push_back(std::move(e));
    for (auto& p : parts) slice->args.push_back(std::move(p));
    return slice;
  }

  void parse_call_args(Expr* e) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) fail(peek().offset, "unsupported *args or **kwargs in a call");
      if (peek().kind == Tok::kName && is_op("=", 1)) {
        std::string key = next().text;
        next();
        e->kwargs.emplace_back(key, parse_expression());
      } else {
        if (!e->kwargs.empty())
          fail(peek().offset, "a positional argument after keyword arguments");
        e->args.push_back(parse_expression());
      }
      if (!is_op(")")) expect_op(",");
    }
    next();
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = make(Expr::Kind::kCall, callee->offset);
    e->args.push_back(std::move(callee));
    parse_call_args(e.get());
    return e;
  }

  ExprPtr parse_filters(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        next();
        auto f = make(Expr::Kind::kFilter, peek().offset);
        f->name = expect_name("a filter name");
        while (is_op(".")) {
          next();
          f->name += "." + expect_name("a filter name");
        }
        f->args.push_back(std::move(e));
        if (is_op("(")) parse_call_args(f.get());
        e = std::move(f);
      } else if (is_name("is")) {
        next();
        auto t = make(Expr::Kind::kTest, peek().offset);
        if (is_name("not")) {
          next();
          t->negated = true;
        }
        const Token& name = peek();
        if (name.kind != Tok::kName)
          fail(name.offset, "expected a test name, got " + describe(name));
        t->name = next().text;
        t->args.push_back(std::move(e));
        if (is_op("(")) {
          parse_call_args(t.get());
        } else if ((peek().kind == Tok::kName || peek().kind == Tok::kString ||
                    peek().kind == Tok::kInt || peek().kind == Tok::kFloat || is_op("[") ||
                    is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and") && !is_name("if") &&
                   !is_name("in") && !is_name("is") && !is_name("not")) {
          t->args.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  static constexpr int kMaxDepth = 200;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Evaluator
// ---------------------------------------------------------------------------------------------

using Scope = std::unordered_map<std::string, Value>;

enum class Flow { kNormal, kBreak, kContinue };

// A template error from a built-in function; the evaluator adds the position.
struct CallError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string undefined_message(const Value& v) {
  return v.name().empty() ? "an undefined value" : v.name();
}

int64_t arg_int(const Value& v, const char* what) {
  if (v.kind() != Value::Kind::kInt && v.kind() != Value::Kind::kBool)
    throw CallError(std::string(what) + " must be an integer, got " + v.type_name());
  return v.as_int();
}

const std::string& arg_string(const Value& v, const char* what) {
  if (!v.is_string())
    throw CallError(std::string(what) + " must be a string, got " + v.type_name());
  return v.as_string();
}

// Positional or keyword argument `index`/`name` of a call, or `fallback`.
Value argument(const CallArgs& a, size_t index, const char* name, Value fallback = Value()) {
  if (index < a.positional.size()) return a.positional[index];
  for (const auto& kw : a.keyword)
    if (kw.first == name) return kw.second;
  return fallback;
}

void check_arity(const CallArgs& a, size_t most, const std::string& what) {
  if (a.positional.size() > most)
    throw CallError(what + " takes at most " + std::to_string(most) + " arguments, got " +
                    std::to_string(a.positional.size()));
}

// Python's str.strip family over code points: `chars` none strips whitespace.
std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  const std::u32string cps = utf8_to_code_points(s);
  std::u32string set;
  const bool whitespace = chars.is_undefined() || chars.is_none();
  if (!whitespace) set = utf8_to_code_points(arg_string(chars, "strip's characters"));
  auto strippable = [&](char32_t c) {
    return whitespace ? is_python_space(c) : set.find(c) != std::u32string::npos;
  };
  size_t begin = 0, end = cps.size();
  if (left)
    while (begin < end && strippable(cps[begin])) ++begin;
  if (right)
    while (end > begin && strippable(cps[end - 1])) --end;
  return code_points_to_utf8(cps.substr(begin, end - begin));
}

// Python's str.upper/lower/capitalize/title, one code point at a time (ICU's simple case
// mappings; Python's few one-to-many mappings such as "ß".upper() == "SS" are not made).
std::string map_case(const std::string& s, UChar32 (*map)(UChar32)) {
  std::u32string cps = utf8_to_code_points(s);
  for (char32_t& c : cps) c = static_cast<char32_t>(map(static_cast<UChar32>(c)));
  return code_points_to_utf8(cps);
}

std::string to_upper(const std::string& s) {
  return map_case(s, u_toupper);
}
std::string to_lower(const std::string& s) {
  return map_case(s, u_tolower);
}

std::string capitalize(const std::string& s) {
  std::u32string cps = utf8_to_code_points(s);
  for (size_t i = 0; i < cps.size(); ++i)
    cps[i] = static_cast<char32_t>(i == 0 ? u_totitle(static_cast<UChar32>(cps[i]))
                                          : u_tolower(static_cast<UChar32>(cps[i])));
  return code_points_to_utf8(cps);
}

std::string title(const std::string& s) {
  std::u32string cps = utf8_to_code_points(s);
  bool previous_cased = false;
  for (char32_t& c : cps) {
    const auto u = static_cast<UChar32>(c);
    const bool cased = u_isUUppercase(u) || u_isULowercase(u) || u_istitle(u);
    if (cased) c = static_cast<char32_t>(previous_cased ? u_tolower(u) : u_totitle(u));
    previous_cased = cased;
  }
  return code_points_to_utf8(cps);
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to,
                        int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` between every character
    const std::u32string cps = utf8_to_code_points(s);
    int64_t done = 0;
    for (char32_t c : cps) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      out += code_points_to_utf8(std::u32string(1, c));
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t found = s.find(from, pos);
    if (found == std::string::npos) break;
    out += s.substr(pos, found - pos) + to;
    pos = found + from.size();
    ++done;
  }
  return out + s.substr(pos);
}

Value split(const std::string& s, const Value& sep, int64_t maxsplit) {
  List parts;
  if (sep.is_undefined() || sep.is_none()) {
    const std::u32string cps = utf8_to_code_points(s);
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && is_python_space(cps[i])) ++i;
      if (i >= cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        size_t end = cps.size();
        while (end > i && is_python_space(cps[end - 1])) --end;
        parts.push_back(Value::string(code_points_to_utf8(cps.substr(i, end - i))));
        break;
      }
      size_t j = i;
      while (j < cps.size() && !is_python_space(cps[j])) ++j;
      parts.push_back(Value::string(code_points_to_utf8(cps.substr(i, j - i))));
      i = j;
    }
    return Value::list(std::move(parts));
  }
  const std::string& separator = arg_string(sep, "split's separator");
  if (separator.empty()) throw CallError("split: empty separator");
  size_t pos = 0;
  while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
    const size_t found = s.find(separator, pos);
    if (found == std::string::npos) break;
    parts.push_back(Value::string(s.substr(pos, found - pos)));
    pos = found + separator.size();
  }
  parts.push_back(Value::string(s.substr(pos)));
  return Value::list(std::move(parts));
}

// The items a for loop or a filter walks: list items, dict keys, string characters.
List iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kList:
      return v.as_list();
    case Value::Kind::kDict: {
      List keys;
      for (const auto& item : v.as_dict().items) keys.push_back(Value::string(item.first));
      return keys;
    }
    case Value::Kind::kString: {
      List chars;
      for (char32_t c : utf8_to_code_points(v.as_string()))
        chars.push_back(Value::string(code_points_to_utf8(std::u32string(1, c))));
      return chars;
    }
    default:
      throw CallError("'" + v.type_name() + "' object is not iterable");
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return static_cast<int64_t>(utf8_to_code_points(v.as_string()).size());
    case Value::Kind::kList:
      return static_cast<int64_t>(v.as_list().size());
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.as_dict().items.size());
    default:
      throw CallError("object of type '" + v.type_name() + "' has no len()");
  }
}

// Python's comparison for <, >, <=, >=: numbers with numbers, strings with strings.
int compare(const Value& a, const Value& b, const std::string& op) {
  if (a.is_number() && b.is_number()) {
    const double x = a.as_double(), y = b.as_double();
    if (a.kind() != Value::Kind::kFloat && b.kind() != Value::Kind::kFloat)
      return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string())
    return a.as_string().compare(b.as_string()) < 0 ? -1 : a.as_string() == b.as_string() ? 0 : 1;
  if (a.is_undefined()) throw CallError(undefined_message(a));
  if (b.is_undefined()) throw CallError(undefined_message(b));
  throw CallError("'" + op + "' not supported between instances of '" + a.type_name() + "' and '" +
                  b.type_name() + "'");
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!item.is_string())
        throw CallError("'in <string>' requires string as left operand, not " + item.type_name());
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::kList:
      for (const Value& v : container.as_list())
        if (equal(v, item)) return true;
      return false;
    case Value::Kind::kDict:
      return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
    default:
      throw CallError("argument of type '" + container.type_name() + "' is not iterable");
  }
}

// Python's index normalisation for item access: -1 is the last.
bool normalise_index(int64_t* index, int64_t size) {
  if (*index < 0) *index += size;
  return *index >= 0 && *index < size;
}

// Python's slice indices for a sequence of `size` items.
std::vector<int64_t> slice_indices(int64_t size, const Value& start_v, const Value& stop_v,
                                   const Value& step_v) {
  const auto given = [](const Value& v) { return !v.is_undefined() && !v.is_none(); };
  const int64_t step = given(step_v) ? arg_int(step_v, "a slice step") : 1;
  if (step == 0) throw CallError("slice step cannot be zero");
  auto clamp = [&](const Value& v, int64_t fallback) {
    if (!given(v)) return fallback;
    int64_t i = arg_int(v, "a slice index");
    if (i < 0) i += size;
    if (step > 0) return std::max<int64_t>(0, std::min(i, size));
    return std::max<int64_t>(-1, std::min(i, size - 1));
  };
  const int64_t start = clamp(start_v, step > 0 ? 0 : size - 1);
  const int64_t stop = clamp(stop_v, step > 0 ? size : -1);
  std::vector<int64_t> out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(i);
  return out;
}

std::string strftime_now(const std::string& format) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[256];
  const size_t n = std::strftime(buf, sizeof(buf), format.c_str(), &local);
  return std::string(buf, n);
}

class Renderer {
 public:
  Renderer(const Program& program, const Value& context) : program_(program) {
    auto globals = std::make_shared<Scope>();
    install_globals(*globals);
    if (context.is_dict())
      for (const auto& item : context.as_dict().items) (*globals)[item.first] = item.second;
    scopes_.push_back(globals);
    scopes_.push_back(std::make_shared<Scope>());  // the template's own variables
  }

  std::string run() {
    std::string out;
    exec(program_.body, out);
    return out;
  }

 private:
  void install_globals(Scope& globals) {
    globals["raise_exception"] = Value::function(
        [](const CallArgs& a) -> Value {
          throw CallError("the template raises: " +
                          argument(a, 0, "message", Value::string("")).str());
        },
        "raise_exception");
    globals["namespace"] = Value::function(
        [](const CallArgs& a) {
          auto d = std::make_shared<Dict>();
          d->is_namespace = true;
          for (const Value& p : a.positional) {
            if (!p.is_dict()) throw CallError("namespace() takes a dict or keyword arguments");
            for (const auto& item : p.as_dict().items) d->set(item.first, item.second);
          }
          for (const auto& kw : a.keyword) d->set(kw.first, kw.second);
          return Value::dict(d);
        },
        "namespace");
    globals["dict"] = Value::function(
        [](const CallArgs& a) {
          auto d = std::make_shared<Dict>();
          for (const auto& kw : a.keyword) d->set(kw.first, kw.second);
          return Value::dict(d);
        },
        "dict");
    globals["range"] = Value::function(
        [](const CallArgs& a) {
          int64_t start = 0, stop = 0, step = 1;
          if (a.positional.size() == 1) {
            stop = arg_int(a.positional[0], "range's stop");
          } else if (a.positional.size() == 2 || a.positional.size() == 3) {
            start = arg_int(a.positional[0], "range's start");
            stop = arg_int(a.positional[1], "range's stop");
            if (a.positional.size() == 3) step = arg_int(a.positional[2], "range's step");
          } else {
            throw CallError("range() takes 1 to 3 arguments");
          }
          if (step == 0) throw CallError("range() step must not be zero");
          List out;
          for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            out.push_back(Value::integer(i));
            if (out.size() > 10000000) throw CallError("range() of more than 10 million items");
          }
          return Value::list(std::move(out));
        },
        "range");
    globals["strftime_now"] = Value::function(
        [](const CallArgs& a) {
          return Value::string(
              strftime_now(arg_string(argument(a, 0, "format"), "strftime_now's format")));
        },
        "strftime_now");
  }

  // --- scopes ---

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto found = (*it)->find(name);
      if (found != (*it)->end()) return found->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  void assign(const std::string& name, Value value) { (*scopes_.back())[name] = std::move(value); }

  // --- statements ---

  Flow exec(const Body& body, std::string& out) {
    for (const auto& s : body) {
      const Flow flow = exec(*s, out);
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  Flow exec(const Stmt& s, std::string& out) {
    // A template is data from a model directory: it may loop, recurse or grow without end.
    if (++steps_ > kMaxSteps) fail(s.offset, "the template runs more than 10 million steps");
    if (out.size() > kMaxOutput) fail(s.offset, "the template renders more than 256 MB");
    switch (s.kind) {
      case Stmt::Kind::kText:
        out += s.text;
        return Flow::kNormal;
      case Stmt::Kind::kOutput:
        out += eval(*s.exprs[0]).str();
        return Flow::kNormal;
      case Stmt::Kind::kIf:
        for (size_t i = 0; i < s.exprs.size(); ++i)
          if (eval(*s.exprs[i]).truthy()) return exec(s.bodies[i], out);
        if (s.bodies.size() > s.exprs.size()) return exec(s.bodies.back(), out);
        return Flow::kNormal;
      case Stmt::Kind::kFor:
        exec_for(s, out);
        return Flow::kNormal;
      case Stmt::Kind::kSet: {
        Value value = eval(*s.exprs[0]);
        if (!s.attribute.empty()) {
          Value target = lookup(s.text);
          if (!target.is_dict() || !target.as_dict().is_namespace)
            fail(s.offset, "cannot assign attribute '" + s.attribute + "' of '" + s.text +
                               "' (not a namespace())");
          target.as_dict().set(s.attribute, std::move(value));
        } else if (s.targets.size() == 1) {
          assign(s.targets[0], std::move(value));
        } else {
          unpack(s.targets, value, s.offset);
        }
        return Flow::kNormal;
      }
      case Stmt::Kind::kSetBlock: {
        std::string captured;
        exec(s.bodies[0], captured);
        assign(s.targets[0], Value::string(captured));
        return Flow::kNormal;
      }
      case Stmt::Kind::kMacro:
        assign(s.text, make_macro(s));
        return Flow::kNormal;
      case Stmt::Kind::kBreak:
        if (loop_depth_ == 0) fail(s.offset, "'break' outside a for loop");
        return Flow::kBreak;
      case Stmt::Kind::kContinue:
        if (loop_depth_ == 0) fail(s.offset, "'continue' outside a for loop");
        return Flow::kContinue;
      case Stmt::Kind::kGeneration:
        return exec(s.bodies[0], out);
    }
    return Flow::kNormal;
  }

  void unpack(const std::vector<std::string>& targets, const Value& value, size_t offset) {
    List items;
    try {
      items = iterate(value);
    } catch (const CallError& e) {
      fail(offset, std::string("cannot unpack: ") + e.what());
    }
    if (items.size() != targets.size())
      fail(offset, "cannot unpack " + std::to_string(items.size()) + " values into " +
                       std::to_string(targets.size()) + " names");
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], items[i]);
  }

  void exec_for(const Stmt& s, std::string& out) {
    const Value iterable = eval(*s.exprs[0]);
    List items;
    try {
      items = iterate(iterable);
    } catch (const CallError& e) {
      fail(s.exprs[0]->offset, e.what());
    }
    scopes_.push_back(std::make_shared<Scope>());
    ++loop_depth_;
    auto bind = [&](const Value& item) {
      if (s.targets.size() == 1)
        assign(s.targets[0], item);
      else
        unpack(s.targets, item, s.offset);
    };
    if (s.exprs.size() > 1) {  // {% for x in xs if cond %}: the loop sees only what passes
      List kept;
      for (const Value& item : items) {
        bind(item);
        if (eval(*s.exprs[1]).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      if (++steps_ > kMaxSteps) fail(s.offset, "the template runs more than 10 million steps");
      bind(items[static_cast<size_t>(i)]);
      auto loop = std::make_shared<Dict>();
      loop->set("index0", Value::integer(i));
      loop->set("index", Value::integer(i + 1));
      loop->set("revindex0", Value::integer(n - i - 1));
      loop->set("revindex", Value::integer(n - i));
      loop->set("first", Value::boolean(i == 0));
      loop->set("last", Value::boolean(i == n - 1));
      loop->set("length", Value::integer(n));
      loop->set("depth", Value::integer(1));
      loop->set("depth0", Value::integer(0));
      loop->set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)]
                                  : Value::undefined("'loop.previtem' is undefined"));
      loop->set("nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)]
                                      : Value::undefined("'loop.nextitem' is undefined"));
      loop->set("cycle", Value::function(
                             [i](const CallArgs& a) {
                               if (a.positional.empty())
                                 throw CallError("loop.cycle() needs arguments");
                               return a.positional[static_cast<size_t>(i) % a.positional.size()];
                             },
                             "loop.cycle"));
      assign("loop", Value::dict(loop));
      if (exec(s.bodies[0], out) == Flow::kBreak) break;
    }
    --loop_depth_;
    scopes_.pop_back();
    if (n == 0 && s.bodies.size() > 1) exec(s.bodies[1], out);
  }

  Value make_macro(const Stmt& s) {
    const Stmt* macro = &s;
    return Value::function(
        [this, macro](const CallArgs& a) {
          if (a.positional.size() > macro->targets.size())
            throw CallError("macro '" + macro->text + "' takes " +
                            std::to_string(macro->targets.size()) + " arguments, got " +
                            std::to_string(a.positional.size()));
          if (macro_depth_ >= kMaxMacroDepth)
            throw CallError("macro '" + macro->text + "' calls nested more than 100 deep");
          auto frame = std::make_shared<Scope>();
          // The macro sees the globals and the template's variables, not its caller's loop.
          struct Restore {
            Renderer& r;
            std::vector<std::shared_ptr<Scope>> scopes;
            int loop_depth;
            ~Restore() {
              r.scopes_ = std::move(scopes);
              r.loop_depth_ = loop_depth;
              --r.macro_depth_;
            }
          } restore{*this, scopes_, loop_depth_};
          ++macro_depth_;
          scopes_ = {restore.scopes[0], restore.scopes[1], frame};
          loop_depth_ = 0;
          for (size_t i = 0; i < macro->targets.size(); ++i) {
            Value v = argument(a, i, macro->targets[i].c_str(),
                               Value::undefined("'" + macro->targets[i] + "' is undefined"));
            if (v.is_undefined() && i >= a.positional.size() && macro->exprs[i])
              v = eval(*macro->exprs[i]);
            (*frame)[macro->targets[i]] = v;
          }
          for (const auto& kw : a.keyword)
            if (std::find(macro->targets.begin(), macro->targets.end(), kw.first) ==
                macro->targets.end())
              throw CallError("macro '" + macro->text + "' has no parameter '" + kw.first + "'");
          std::string out;
          exec(macro->bodies[0], out);
          return Value::string(out);
        },
        s.text);
  }

  // --- expressions ---

  Value eval(const Expr& e) {
    try {
      return eval_unchecked(e);
    } catch (const CallError& error) {
      fail(e.offset, error.what());
    }
  }

  Value eval_unchecked(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName:
        return lookup(e.name);
      case Expr::Kind::kList: {
        List items;
        for (const auto& a : e.args) items.push_back(eval(*a));
        return e.tuple ? Value::tuple(std::move(items)) : Value::list(std::move(items));
      }
      case Expr::Kind::kDict: {
        auto d = std::make_shared<Dict>();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const Value key = eval(*e.args[i]);
          if (!key.is_string())
            fail(e.args[i]->offset, "dict keys must be strings here, got " + key.type_name());
          d->set(key.as_string(), eval(*e.args[i + 1]));
        }
        return Value::dict(d);
      }
      case Expr::Kind::kAttr:
        return attribute(eval(*e.args[0]), e.name);
      case Expr::Kind::kItem:
        return item(eval(*e.args[0]), eval(*e.args[1]));
      case Expr::Kind::kSlice: {
        const Value target = eval(*e.args[0]);
        const Value start = e.args[1] ? eval(*e.args[1]) : Value();
        const Value stop = e.args[2] ? eval(*e.args[2]) : Value();
        const Value step = e.args[3] ? eval(*e.args[3]) : Value();
        if (target.is_list()) {
          List out;
          for (int64_t i :
               slice_indices(static_cast<int64_t>(target.as_list().size()), start, stop, step))
            out.push_back(target.as_list()[static_cast<size_t>(i)]);
          return Value::list(std::move(out));
        }
        if (target.is_string()) {
          const std::u32string cps = utf8_to_code_points(target.as_string());
          std::u32string out;
          for (int64_t i : slice_indices(static_cast<int64_t>(cps.size()), start, stop, step))
            out.push_back(cps[static_cast<size_t>(i)]);
          return Value::string(code_points_to_utf8(out));
        }
        if (target.is_undefined()) throw CallError(undefined_message(target));
        throw CallError("'" + target.type_name() + "' object is not subscriptable");
      }
      case Expr::Kind::kCall: {
        const Value callee = eval(*e.args[0]);
        CallArgs args;
        for (size_t i = 1; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i]));
        for (const auto& kw : e.kwargs) args.keyword.emplace_back(kw.first, eval(*kw.second));
        if (callee.is_undefined()) throw CallError(undefined_message(callee));
        if (!callee.is_function())
          throw CallError("'" + callee.type_name() + "' object is not callable");
        return callee.as_function()(args);
      }
      case Expr::Kind::kFilter: {
        if (e.name == "default" || e.name == "d") {
          const Value v = eval(*e.args[0]);
          CallArgs args = call_args(e);
          const Value fallback = argument(args, 0, "default_value", Value::string(""));
          const bool boolean = argument(args, 1, "boolean", Value::boolean(false)).truthy();
          return (v.is_undefined() || (boolean && !v.truthy())) ? fallback : v;
        }
        return filter(e.name, eval(*e.args[0]), call_args(e), e.offset);
      }
      case Expr::Kind::kTest: {
        const Value v = eval(*e.args[0]);
        CallArgs args = call_args(e);
        const bool result = test(e.name, v, args, e.offset);
        return Value::boolean(e.negated ? !result : result);
      }
      case Expr::Kind::kNot:
        return Value::boolean(!eval(*e.args[0]).truthy());
      case Expr::Kind::kNeg:
      case Expr::Kind::kPos: {
        const Value v = eval(*e.args[0]);
        if (v.is_undefined()) throw CallError(undefined_message(v));
        if (!v.is_number())
          throw CallError("bad operand type for unary " +
                          std::string(e.kind == Expr::Kind::kNeg ? "-" : "+") + ": '" +
                          v.type_name() + "'");
        if (e.kind == Expr::Kind::kPos)
          return v.kind() == Value::Kind::kBool ? Value::integer(v.as_int()) : v;
        return v.kind() == Value::Kind::kFloat ? Value::real(-v.as_double())
                                               : Value::integer(-v.as_int());
      }
      case Expr::Kind::kBinary:
        return binary(e);
      case Expr::Kind::kCond:
        if (eval(*e.args[1]).truthy()) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2])
                         : Value::undefined("the else of a conditional expression");
    }
    return Value();
  }

  // Arguments of a filter or test call: positional ones after the value (args[0]).
  CallArgs call_args(const Expr& e) {
    CallArgs args;
    for (size_t i = 1; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i]));
    for (const auto& kw : e.kwargs) args.keyword.emplace_back(kw.first, eval(*kw.second));
    return args;
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value left = eval(*e.args[0]);
      return left.truthy() ? eval(*e.args[1]) : left;
    }
    if (op == "or") {
      Value left = eval(*e.args[0]);
      return left.truthy() ? left : eval(*e.args[1]);
    }
    const Value a = eval(*e.args[0]);
    const Value b = eval(*e.args[1]);
    if (op == "==") return Value::boolean(equal(a, b));
    if (op == "!=") return Value::boolean(!equal(a, b));
    if (op == "<") return Value::boolean(compare(a, b, op) < 0);
    if (op == ">") return Value::boolean(compare(a, b, op) > 0);
    if (op == "<=") return Value::boolean(compare(a, b, op) <= 0);
    if (op == ">=") return Value::boolean(compare(a, b, op) >= 0);
    if (op == "in") return Value::boolean(contains(b, a));
    if (op == "not in") return Value::boolean(!contains(b, a));
    if (op == "~") return Value::string(a.str() + b.str());
    if (a.is_undefined()) throw CallError(undefined_message(a));
    if (b.is_undefined()) throw CallError(undefined_message(b));
    return arithmetic(op, a, b);
  }

  static Value arithmetic(const std::string& op, const Value& a, const Value& b) {
    const auto unsupported = [&]() -> CallError {
      return CallError("unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" +
                       b.type_name() + "'");
    };
    if (op == "+") {
      if (a.is_string() && b.is_string()) return Value::string(a.as_string() + b.as_string());
      if (a.is_list() && b.is_list()) {
        List out = a.as_list();
        out.insert(out.end(), b.as_list().begin(), b.as_list().end());
        return Value::list(std::move(out));
      }
    }
    if (op == "*") {
      const Value* text = a.is_string() || a.is_list()   ? &a
                          : b.is_string() || b.is_list() ? &b
                                                         : nullptr;
      const Value* times = text == &a ? &b : &a;
      if (text != nullptr &&
          (times->kind() == Value::Kind::kInt || times->kind() == Value::Kind::kBool)) {
        const int64_t n = std::max<int64_t>(0, times->as_int());
        const auto size = static_cast<int64_t>(text->is_string() ? text->as_string().size()
                                                                 : text->as_list().size());
        if (size > 0 && n > (int64_t{1} << 24) / size)
          throw CallError("repetition of more than 16 million items or bytes");
        if (text->is_string()) {
          std::string out;
          for (int64_t i = 0; i < n; ++i) out += text->as_string();
          return Value::string(out);
        }
        List out;
        for (int64_t i = 0; i < n; ++i)
          out.insert(out.end(), text->as_list().begin(), text->as_list().end());
        return Value::list(std::move(out));
      }
    }
    if (op == "%" && a.is_string()) throw CallError("unsupported %-formatting of a string");
    if (!a.is_number() || !b.is_number()) throw unsupported();
    const bool ints = a.kind() != Value::Kind::kFloat && b.kind() != Value::Kind::kFloat;
    const double x = a.as_double(), y = b.as_double();
    if (op == "+") return ints ? Value::integer(a.as_int() + b.as_int()) : Value::real(x + y);
    if (op == "-") return ints ? Value::integer(a.as_int() - b.as_int()) : Value::real(x - y);
    if (op == "*") return ints ? Value::integer(a.as_int() * b.as_int()) : Value::real(x * y);
    if (op == "/") {
      if (y == 0) throw CallError("division by zero");
      return Value::real(x / y);
    }
    if (op == "//" || op == "%") {
      if (y == 0) throw CallError(op == "//" ? "integer division by zero" : "modulo by zero");
      if (ints) {
        const int64_t p = a.as_int(), q = b.as_int();
        int64_t quotient = p / q, remainder = p % q;
        if (remainder != 0 && ((remainder < 0) != (q < 0))) {
          --quotient;
          remainder += q;
        }
        return Value::integer(op == "//" ? quotient : remainder);
      }
      const double quotient = std::floor(x / y);
      return Value::real(op == "//" ? quotient : x - quotient * y);
    }
    if (op == "**") {
      if (ints && b.as_int() >= 0) {
        int64_t result = 1;
        for (int64_t i = 0; i < b.as_int() && i < 64; ++i) result *= a.as_int();
        return Value::integer(result);
      }
      return Value::real(std::pow(x, y));
    }
    throw unsupported();
  }

  // jinja2's getattr: methods of str and dict first, then the dict's key.
  Value attribute(const Value& target, const std::string& name) {
    if (target.is_undefined()) throw CallError(undefined_message(target));
    if (target.is_string() || (target.is_dict() && !target.as_dict().is_namespace)) {
      Value method = bound_method(target, name);
      if (!method.is_undefined()) return method;
    }
    if (target.is_dict()) {
      const Value* found = target.as_dict().find(name);
      if (found != nullptr) return *found;
      return Value::undefined("'" + target.type_name() + " object' has no attribute '" + name +
                              "'");
    }
    return Value::undefined("'" + target.type_name() + " object' has no attribute '" + name + "'");
  }

  // jinja2's getitem: the key or index, else the attribute.
  Value item(const Value& target, const Value& key) {
    if (target.is_undefined()) throw CallError(undefined_message(target));
    if (target.is_dict()) {
      if (key.is_string()) {
        const Value* found = target.as_dict().find(key.as_string());
        if (found != nullptr) return *found;
        return attribute(target, key.as_string());
      }
      return Value::undefined("'dict object' has no attribute " + key.repr());
    }
    if (target.is_list() || target.is_string()) {
      if (key.is_string()) return attribute(target, key.as_string());
      if (key.kind() != Value::Kind::kInt && key.kind() != Value::Kind::kBool)
        throw CallError(target.type_name() + " indices must be integers, not " + key.type_name());
      int64_t index = key.as_int();
      if (target.is_list()) {
        if (!normalise_index(&index, static_cast<int64_t>(target.as_list().size())))
          return Value::undefined("list object has no element " + key.repr());
        return target.as_list()[static_cast<size_t>(index)];
      }
      const std::u32string cps = utf8_to_code_points(target.as_string());
      if (!normalise_index(&index, static_cast<int64_t>(cps.size())))
        return Value::undefined("str object has no element " + key.repr());
      return Value::string(code_points_to_utf8(std::u32string(1, cps[static_cast<size_t>(index)])));
    }
    return Value::undefined("'" + target.type_name() + " object' has no attribute " + key.repr());
  }

  // str and dict methods templates call; undefined when `name` is none of them.
  static Value bound_method(const Value& target, const std::string& name) {
    return target.is_dict() ? dict_method(target, name) : string_method(target.as_string(), name);
  }

  // (key, value) tuples of a dict, in its order: dict.items() and the items filter.
  static Value dict_items(const Dict& dict) {
    List out;
    for (const auto& item : dict.items)
      out.push_back(Value::tuple({Value::string(item.first), item.second}));
    return Value::list(std::move(out));
  }

  static Value dict_method(const Value& target, const std::string& name) {
    if (name == "items")
      return Value::function(
          [target](const CallArgs& a) {
            check_arity(a, 0, "items()");
            return dict_items(target.as_dict());
          },
          "dict.items");
    if (name == "keys")
      return Value::function(
          [target](const CallArgs& a) {
            check_arity(a, 0, "keys()");
            return Value::list(iterate(target));
          },
          "dict.keys");
    if (name == "values")
      return Value::function(
          [target](const CallArgs& a) {
            check_arity(a, 0, "values()");
            List out;
            for (const auto& item : target.as_dict().items) out.push_back(item.second);
            return Value::list(std::move(out));
          },
          "dict.values");
    if (name == "get")
      return Value::function(
          [target](const CallArgs& a) {
            check_arity(a, 2, "get()");
            const Value key = argument(a, 0, "key");
            const Value* found = key.is_string() ? target.as_dict().find(key.as_string()) : nullptr;
            return found != nullptr ? *found : argument(a, 1, "default", Value::none());
          },
          "dict.get");
    return Value();
  }

  static Value string_method(const std::string& s, const std::string& name) {
    using Method = Value (*)(const std::string&, const CallArgs&);
    static const std::map<std::string, Method> kMethods = {
        {"strip",
         [](const std::string& t, const CallArgs& a) {
           return Value::string(strip(t, argument(a, 0, "chars"), true, true));
         }},
        {"lstrip",
         [](const std::string& t, const CallArgs& a) {
           return Value::string(strip(t, argument(a, 0, "chars"), true, false));
         }},
        {"rstrip",
         [](const std::string& t, const CallArgs& a) {
           return Value::string(strip(t, argument(a, 0, "chars"), false, true));
         }},
        {"upper", [](const std::string& t, const CallArgs&) { return Value::string(to_upper(t)); }},
        {"lower", [](const std::string& t, const CallArgs&) { return Value::string(to_lower(t)); }},
        {"title", [](const std::string& t, const CallArgs&) { return Value::string(title(t)); }},
        {"capitalize",
         [](const std::string& t, const CallArgs&) { return Value::string(capitalize(t)); }},
        {"startswith",
         [](const std::string& t, const CallArgs& a) {
           const Value prefix = argument(a, 0, "prefix");
           for (const Value& p : prefix.is_list() ? prefix.as_list() : List{prefix})
             if (t.compare(0, arg_string(p, "startswith's prefix").size(), p.as_string()) == 0)
               return Value::boolean(true);
           return Value::boolean(false);
         }},
        {"endswith",
         [](const std::string& t, const CallArgs& a) {
           const Value suffix = argument(a, 0, "suffix");
           for (const Value& p : suffix.is_list() ? suffix.as_list() : List{suffix}) {
             const std::string& x = arg_string(p, "endswith's suffix");
             if (x.size() <= t.size() && t.compare(t.size() - x.size(), x.size(), x) == 0)
               return Value::boolean(true);
           }
           return Value::boolean(false);
         }},
        {"split",
         [](const std::string& t, const CallArgs& a) {
           return split(
               t, argument(a, 0, "sep"),
               arg_int(argument(a, 1, "maxsplit", Value::integer(-1)), "split's maxsplit"));
         }},
        {"replace",
         [](const std::string& t, const CallArgs& a) {
           return Value::string(replace_all(
               t, arg_string(argument(a, 0, "old"), "replace's old"),
               arg_string(argument(a, 1, "new"), "replace's new"),
               arg_int(argument(a, 2, "count", Value::integer(-1)), "replace's count")));
         }},
        {"join",
         [](const std::string& t, const CallArgs& a) {
           std::string out;
           bool first = true;
           for (const Value& v : iterate(argument(a, 0, "iterable"))) {
             if (!first) out += t;
             out += arg_string(v, "join's items");
             first = false;
           }
           return Value::string(out);
         }},
        {"find",
         [](const std::string& t, const CallArgs& a) {
           const size_t at = t.find(arg_string(argument(a, 0, "sub"), "find's argument"));
           return Value::integer(
               at == std::string::npos
                   ? -1
                   : static_cast<int64_t>(utf8_to_code_points(t.substr(0, at)).size()));
         }},
        {"count",
         [](const std::string& t, const CallArgs& a) {
           const std::string& sub = arg_string(argument(a, 0, "sub"), "count's argument");
           if (sub.empty())
             return Value::integer(static_cast<int64_t>(utf8_to_code_points(t).size()) + 1);
           int64_t n = 0;
           for (size_t at = t.find(sub); at != std::string::npos; at = t.find(sub, at + sub.size()))
             ++n;
           return Value::integer(n);
         }},
    };
    auto found = kMethods.find(name);
    if (found == kMethods.end()) return Value();
    const Method method = found->second;
    return Value::function([s, method](const CallArgs& a) { return method(s, a); }, "str." + name);
  }

  bool test(const std::string& name, const Value& v, const CallArgs& args, size_t offset) {
    const Value other = argument(args, 0, "other");
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.kind() == Value::Kind::kBool;
    if (name == "true") return v.kind() == Value::Kind::kBool && v.as_bool();
    if (name == "false") return v.kind() == Value::Kind::kBool && !v.as_bool();
    if (name == "integer") return v.kind() == Value::Kind::kInt;
    if (name == "float") return v.kind() == Value::Kind::kFloat;
    if (name == "number") return v.is_number();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.is_dict();
    if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
    if (name == "sequence") return v.is_string() || v.is_list() || v.is_dict();
    if (name == "callable") return v.is_function();
    if (name == "eq" || name == "equalto" || name == "==") return equal(v, other);
    if (name == "ne" || name == "!=") return !equal(v, other);
    if (name == "lt" || name == "lessthan" || name == "<") return compare(v, other, "<") < 0;
    if (name == "gt" || name == "greaterthan" || name == ">") return compare(v, other, ">") > 0;
    if (name == "le" || name == "<=") return compare(v, other, "<=") <= 0;
    if (name == "ge" || name == ">=") return compare(v, other, ">=") >= 0;
    if (name == "in") return contains(other, v);
    if (name == "sameas") return v.kind() == other.kind() && equal(v, other);
    if (name == "odd" || name == "even" || name == "divisibleby") {
      const int64_t n = arg_int(v, ("the value of 'is " + name + "'").c_str());
      if (name == "divisibleby") {
        const int64_t d = arg_int(other, "divisibleby's argument");
        if (d == 0) throw CallError("divisibleby 0");
        return n % d == 0;
      }
      return (((n % 2) + 2) % 2 == 1) == (name == "odd");
    }
    if (name == "lower") return v.is_string() && to_lower(v.as_string()) == v.as_string();
    if (name == "upper") return v.is_string() && to_upper(v.as_string()) == v.as_string();
    fail(offset, "unsupported test '" + name + "'");
  }

  // select/reject(attr)? with an optional test: whether item passes.
  bool passes(const Value& item, const CallArgs& args, size_t first, size_t offset) {
    if (args.positional.size() <= first) return item.truthy();
    const std::string& name = arg_string(args.positional[first], "the test's name");
    CallArgs rest;
    rest.positional.assign(args.positional.begin() + static_cast<std::ptrdiff_t>(first) + 1,
                           args.positional.end());
    return test(name, item, rest, offset);
  }

  Value tojson(const Value& v, const CallArgs& args, size_t offset) {
    for (const auto& kw : args.keyword)
      if (kw.first != "indent" && !(kw.first == "ensure_ascii" && !kw.second.truthy()) &&
          !(kw.first == "sort_keys" && !kw.second.truthy()))
        fail(offset, "unsupported tojson argument '" + kw.first + "'");
    const Value indent = argument(args, 0, "indent");
    const int spaces =
        indent.is_undefined() || indent.is_none()
            ? -1
            : static_cast<int>(std::min<int64_t>(64, arg_int(indent, "tojson's indent")));
    try {
      return Value::string(v.to_json(spaces));
    } catch (const std::runtime_error& e) {  // an undefined value or a function inside
      throw CallError(e.what());
    }
  }

  Value join(const Value& v, const CallArgs& args) {
    const std::string separator = argument(args, 0, "d", Value::string("")).str();
    const Value attr = argument(args, 1, "attribute");
    std::string out;
    bool first = true;
    for (const Value& item : iterate(v)) {
      if (!first) out += separator;
      out += (attr.is_undefined() ? item : attribute_path(item, attr)).str();
      first = false;
    }
    return Value::string(out);
  }

  // select/reject/selectattr/rejectattr: the items that pass (or fail) the test.
  Value select(const std::string& name, const Value& v, const CallArgs& args, size_t offset) {
    const bool by_attribute = name == "selectattr" || name == "rejectattr";
    const bool keep = name == "selectattr" || name == "select";
    if (by_attribute && args.positional.empty()) throw CallError(name + " needs an attribute name");
    List out;
    for (const Value& item : iterate(v)) {
      const Value subject = by_attribute ? attribute_path(item, args.positional[0]) : item;
      if (passes(subject, args, by_attribute ? 1 : 0, offset) == keep) out.push_back(item);
    }
    return Value::list(std::move(out));
  }

  // map(attribute=...) or map(filter, args...).
  Value map(const Value& v, const CallArgs& args, size_t offset) {
    const Value attr = argument(args, 99, "attribute");
    List out;
    for (const Value& item : iterate(v)) {
      if (!attr.is_undefined()) {
        const Value got = attribute_path(item, attr);
        out.push_back(got.is_undefined() ? argument(args, 99, "default", got) : got);
      } else {
        if (args.positional.empty()) throw CallError("map needs a filter name or attribute=");
        CallArgs rest;
        rest.positional.assign(args.positional.begin() + 1, args.positional.end());
        out.push_back(
            filter(arg_string(args.positional[0], "map's filter name"), item, rest, offset));
      }
    }
    return Value::list(std::move(out));
  }

  // int, float and abs.
  static Value number(const std::string& name, const Value& v, const CallArgs& args) {
    if (name == "int") {
      if (v.is_number())
        return Value::integer(v.kind() == Value::Kind::kFloat ? static_cast<int64_t>(v.as_double())
                                                              : v.as_int());
      if (v.is_string()) {
        char* end = nullptr;
        const std::string text = strip(v.as_string(), Value(), true, true);
        const long long parsed = std::strtoll(text.c_str(), &end, 10);
        if (!text.empty() && end != nullptr && *end == '\0') return Value::integer(parsed);
      }
      return argument(args, 0, "default", Value::integer(0));
    }
    if (name == "float") {
      if (v.is_number()) return Value::real(v.as_double());
      if (v.is_string()) {
        char* end = nullptr;
        const std::string text = strip(v.as_string(), Value(), true, true);
        const double parsed = std::strtod(text.c_str(), &end);
        if (!text.empty() && end != nullptr && *end == '\0') return Value::real(parsed);
      }
      return argument(args, 0, "default", Value::real(0));
    }
    if (name == "abs") {
      if (!v.is_number()) throw CallError("bad operand type for abs(): '" + v.type_name() + "'");
      return v.kind() == Value::Kind::kFloat ? Value::real(std::fabs(v.as_double()))
                                             : Value::integer(std::llabs(v.as_int()));
    }
    throw CallError("not a number filter: " + name);
  }

  Value filter(const std::string& name, const Value& v, const CallArgs& args, size_t offset) {
    if (name == "trim")
      return Value::string(strip(v.str(), argument(args, 0, "chars"), true, true));
    if (name == "length" || name == "count") return Value::integer(length(v));
    if (name == "string") return Value::string(v.str());
    if (name == "upper") return Value::string(to_upper(v.str()));
    if (name == "lower") return Value::string(to_lower(v.str()));
    if (name == "capitalize") return Value::string(capitalize(v.str()));
    if (name == "title") return Value::string(title(v.str()));
    if (name == "safe") return v;
    if (name == "list") return Value::list(iterate(v));
    if (name == "tojson") return tojson(v, args, offset);
    if (name == "first" || name == "last") {
      const List items = iterate(v);
      if (items.empty()) return Value::undefined("no " + name + " item, sequence was empty");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "reverse") {
      if (v.is_string()) {
        std::u32string cps = utf8_to_code_points(v.as_string());
        std::reverse(cps.begin(), cps.end());
        return Value::string(code_points_to_utf8(cps));
      }
      List items = iterate(v);
      std::reverse(items.begin(), items.end());
      return Value::list(std::move(items));
    }
    if (name == "join") return join(v, args);
    if (name == "replace") {
      return Value::string(
          replace_all(v.str(), argument(args, 0, "old").str(), argument(args, 1, "new").str(),
                      arg_int(argument(args, 2, "count", Value::integer(-1)), "replace's count")));
    }
    if (name == "items") {
      if (v.is_undefined()) return Value::list({});
      if (!v.is_dict()) throw CallError("items filter of a " + v.type_name() + ", not a dict");
      return dict_items(v.as_dict());
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject")
      return select(name, v, args, offset);
    if (name == "map") return map(v, args, offset);
    if (name == "int" || name == "float" || name == "abs") return number(name, v, args);
    fail(offset, "unsupported filter '" + name + "'");
  }

  // An attribute, or a dotted path of them ("function.name"), of `item`.
  Value attribute_path(const Value& item, const Value& path) {
    if (path.kind() == Value::Kind::kInt) return this->item(item, path);
    Value current = item;
    const std::string& text = arg_string(path, "an attribute name");
    size_t start = 0;
    while (true) {
      const size_t dot = text.find('.', start);
      const std::string part =
          text.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (current.is_undefined()) return current;
      current = isdigit(static_cast<unsigned char>(part[0]))
                    ? this->item(current, Value::integer(std::stoll(part)))
                    : this->item(current, Value::string(part));
      if (dot == std::string::npos) return current;
      start = dot + 1;
    }
  }

  const Program& program_;
  std::vector<std::shared_ptr<Scope>> scopes_;
  int loop_depth_ = 0;
  int macro_depth_ = 0;
  uint64_t steps_ = 0;
  static constexpr int kMaxMacroDepth = 100;
  static constexpr uint64_t kMaxSteps = 10000000;
  static constexpr size_t kMaxOutput = size_t{1} << 28;
};

// jinja2 reads templates with universal newlines and drops one trailing newline.
std::string normalise_source(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

Template::Template(const std::string& source, std::string where)
    : where_(std::move(where)), program_(std::make_unique<Program>()) {
  const std::string normalised = normalise_source(source);
  try {
    program_->body = Parser(Lexer(normalised).run()).parse_template();
  } catch (const Failure& f) {
    throw Error(where_ + ":" + line_column(normalised, f.offset) + ": " + f.what());
  }
  source_ = normalised;
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Value& context) const {
  try {
    return Renderer(*program_, context).run();
  } catch (const Failure& f) {
    throw Error(where_ + ":" + line_column(source_, f.offset) + ": " + f.what());
  }
}

}  // namespace tiller::jinja
