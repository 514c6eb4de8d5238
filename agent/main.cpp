// sluice: the command line. run, check, schema, version.

#include <librdkafka/rdkafka.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>
#include <uv.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <csignal>
#include <iostream>

#include "agent/agent.h"
#include "agent/config.h"
#include "agent/logging.h"
#include "agent/registry.h"
#include "agent/schema.h"
#include "channels/file/file_inspect.h"

namespace {

// Loads and checks a configuration file; prints every diagnostic to stderr.
std::optional<sluice::Config> load(const std::string& path, const sluice::Registry& registry) {
  sluice::Diagnostics diag(path);
  auto cfg = sluice::loadConfigFile(path, registry, diag, sluice::processEnv());
  std::cerr << diag.format();
  if (!cfg) {
    size_t errors = diag.errorCount();
    std::cerr << path << ": " << errors << (errors == 1 ? " error" : " errors")
              << "; the configuration was not accepted\n";
  }
  return cfg;
}

std::string versionText() {
  return std::string("sluice ") + SLUICE_VERSION + " (commit " + SLUICE_GIT_COMMIT +
         ")\nlibrdkafka " + rd_kafka_version_str() + "\nlibuv " + uv_version_string() + "\n" +
         OpenSSL_version(OPENSSL_VERSION) + "\n";
}

// CLI11 answers an unknown command with "The following arguments were not expected"; say
// what is wrong instead. Returns false (after printing) when the first word is no command.
bool knownCommand(int argc, char** argv, const CLI::App& app) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--log-level") {
      ++i;
      continue;
    }
    if (arg.empty() || arg[0] == '-') continue;
    std::vector<std::string> names;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      names.push_back(sub->get_name());
    }
    if (std::find(names.begin(), names.end(), arg) != names.end()) return true;
    std::string msg = "sluice: unknown command '" + arg + "'";
    auto near = sluice::nearest(arg, names);
    if (!near.empty()) msg += " (did you mean '" + near + "'?)";
    std::string all;
    for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
    std::cerr << msg << "; commands: " << all << "; see sluice --help\n";
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"sluice: a log-shipping agent that loses nothing"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] {
    auto text = versionText();
    text.pop_back();  // CLI11 ends the line itself
    return text;
  });
  std::string config_path = "/etc/sluice/sluice.yaml";
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();

  auto* run = app.add_subcommand("run", "Run the agent");
  run->add_option("-c,--config", config_path, "Configuration file")->capture_default_str();
  auto* check = app.add_subcommand("check", "Validate a configuration file and exit");
  check->add_option("-c,--config", config_path, "Configuration file")->capture_default_str();
  auto* schema = app.add_subcommand("schema", "Print every component type and its options");
  std::string format = "text";
  schema->add_option("--format", format, "text, markdown or json")
      ->check(CLI::IsMember({"text", "markdown", "json"}))
      ->capture_default_str();
  std::string schema_type;
  schema->add_option("type", schema_type, "Only this component type (kafka) or section (agent)");
  auto* version = app.add_subcommand("version", "Print the version");
  auto* channel = app.add_subcommand("channel", "Tools for channels");
  channel->require_subcommand(1);
  auto* inspect =
      channel->add_subcommand("inspect", "Check a file channel's directory record by record");
  std::string inspect_dir;
  inspect->add_option("dir", inspect_dir, "The channel's directory")->required();
  for (auto* sub : {run, check}) {
    sub->add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  }

  if (!knownCommand(argc, argv, app)) return 2;
  CLI11_PARSE(app, argc, argv);
  sluice::setUpLogging(log_level);

  sluice::Registry registry;
  sluice::registerBuiltins(registry);

  if (*inspect) {
    // 0: every record verifies; 1: damage found; 2: the directory cannot be read.
    return sluice::inspectFileChannel(inspect_dir, std::cout);
  }
  if (*version) {
    std::cout << versionText();
    return 0;
  }
  if (*schema) {
    auto f = format == "json"       ? sluice::SchemaFormat::Json
             : format == "markdown" ? sluice::SchemaFormat::Markdown
                                    : sluice::SchemaFormat::Text;
    auto text = sluice::renderSchema(registry, f, schema_type);
    if (text.empty()) {
      std::vector<std::string> names{"agent", "sources", "channels", "sinks", "sink_groups"};
      for (const auto& t : registry.all()) names.push_back(t.name);
      std::string msg = "sluice schema: no component type or section '" + schema_type + "'";
      auto near = sluice::nearest(schema_type, names);
      if (!near.empty()) msg += " (did you mean '" + near + "'?)";
      std::cerr << msg << "; try sluice schema without an argument for all of them\n";
      return 2;
    }
    std::cout << text;
    return 0;
  }
  auto cfg = load(config_path, registry);
  if (!cfg) return 1;
  if (*check) {
    std::cerr << config_path << ": OK\n";
    return 0;
  }
  sluice::Agent agent(registry, config_path);
  return agent.run(std::move(*cfg));
}
