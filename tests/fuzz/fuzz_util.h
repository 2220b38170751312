// Helpers shared by the libFuzzer targets (tests/fuzz/*_fuzz.cpp): a private temporary directory,
// input written to a file there, and a small tokenizer trained once per process.
#pragma once
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "common/tokenizer/tokenizer.h"

namespace tiller::fuzz {

// A directory of this process's own under $TMPDIR (or /tmp), removed at exit.
inline const std::string& temp_dir() {
  static const std::string dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/tiller_fuzz_XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    static std::string removed_at_exit;
    removed_at_exit = pattern;
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(removed_at_exit, ignored);
    });
    return pattern;
  }();
  return dir;
}

// Writes bytes to temp_dir()/name and returns the path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = temp_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

// A 300-piece BPE tokenizer (byte fallback) trained once on a few lines, for the data loaders.
inline const Tokenizer& small_tokenizer() {
  static const std::unique_ptr<Tokenizer> tokenizer = [] {
    const std::string corpus = temp_dir() + "/corpus.txt";
    {
      std::ofstream out(corpus);
      for (int i = 0; i < 40; ++i)
        out << "Once upon a time a little fox named Tom " << i
            << " found a red ball. He was happy and said: thank you, mom!\n"
            << "The user asked the assistant a question about system prompts and answers.\n";
    }
    train_tokenizer(corpus, 300, temp_dir() + "/tok");
    return std::make_unique<Tokenizer>(temp_dir() + "/tok/tokenizer.model");
  }();
  return *tokenizer;
}

}  // namespace tiller::fuzz
