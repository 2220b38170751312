// `tiller inspect FILE.gguf`: what a GGUF file holds, read back and checked (export/gguf_reader.h).
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "export/gguf_reader.h"

namespace tiller {

void add_inspect_command(CLI::App& app, CommandAction& action) {
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand(
      "inspect", "read a GGUF file back: its metadata and tensor table, every length checked");
  cmd->add_option("file", *path, "the .gguf file")->required();
  cmd->add_flag("--json", *json, "print JSON: version, metadata, tensors");
  cmd->callback([path, json, &action] {
    action = [path, json] {
      const GgufFile f = read_gguf(*path);
      if (!*json) {
        std::printf("%s", describe_gguf(f).c_str());
        return 0;
      }
      nlohmann::json out = {{"path", f.path},
                            {"version", f.version},
                            {"alignment", f.alignment},
                            {"data_start", f.data_start},
                            {"metadata", nlohmann::json::object()},
                            {"metadata_types", nlohmann::json::object()},
                            {"tensors", nlohmann::json::array()}};
      for (const auto& [key, value] : f.metadata) out["metadata"][key] = value;
      for (const auto& [key, type] : f.metadata_types) out["metadata_types"][key] = type;
      for (const auto& t : f.tensors)
        out["tensors"].push_back({{"name", t.name},
                                  {"dims", t.dims},
                                  {"type", t.type},
                                  {"offset", t.offset},
                                  {"bytes", t.bytes}});
      std::printf("%s\n",
                  out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      return 0;
    };
  });
}

}  // namespace tiller
