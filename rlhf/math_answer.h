// Final answers of math responses: extraction (GSM8K "####", \boxed{}, the last number), number
// normalisation and comparison, as the GSM8K / DeepSeek / verl graders do.
#pragma once
#include <optional>
#include <string>

namespace tiller {

// The raw final answer of a response, in order of preference: the rest of the line after the last
// "####" (GSM8K), the content of the last \boxed{...} or \fbox{...} (balanced braces), the last
// number in the text. std::nullopt when there is none.
std::optional<std::string> extract_final_answer(const std::string& text);

// The value of an answer written as a number: spaces, "$", a trailing period, thousands commas
// ("1,234"), "%", trailing units or words ("12 apples"), a leading "+", the Unicode minus,
// \frac{a}{b} / \dfrac / a/b, "\!", "{,}" and \text{...} wrappers are allowed. std::nullopt when it
// is not one number ("1,2,3" is a list, "5 and 7" two numbers, "x" none).
std::optional<double> parse_number(std::string text);

// Whether a response's final answer equals the reference: numerically within `tolerance`
// (absolute below 1, relative above) when both are numbers, element by element for lists of
// numbers ("1, 2, 3"), else as text (case and runs of whitespace ignored). A reference holding a
// whole solution ("... #### 72", "... \boxed{72}") is first reduced to its final answer.
bool answers_match(const std::string& response_answer, const std::string& reference,
                   double tolerance);

}  // namespace tiller
