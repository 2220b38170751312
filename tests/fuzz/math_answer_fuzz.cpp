// Fuzzes final-answer extraction, number parsing and answer comparison (rlhf/math_answer.h) on any
// bytes: no crash, no undefined behaviour, an extracted answer is a piece of the text, and a parsed
// number is finite.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "rlhf/math_answer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto answer = tiller::extract_final_answer(text);
  if (answer && text.find(*answer) == std::string::npos) std::abort();
  const auto value = tiller::parse_number(answer.value_or(text));
  if (value && !std::isfinite(*value)) std::abort();
  // The first half as a response's answer, the rest as its reference (a solution or an answer).
  (void)tiller::answers_match(text.substr(0, size / 2), text.substr(size / 2), 1e-6);
  return 0;
}
