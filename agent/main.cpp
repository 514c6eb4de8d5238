// sluice: the command line. run, check, schema, version.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

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
    size_t errors = 0;
    for (const auto& d : diag.all()) errors += d.severity == sluice::Diagnostic::Severity::Error;
    std::cerr << path << ": " << errors << (errors == 1 ? " error" : " errors")
              << "; the configuration was not accepted\n";
  }
  return cfg;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"sluice: a log-shipping agent that loses nothing"};
  app.require_subcommand(1);
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

  CLI11_PARSE(app, argc, argv);
  sluice::setUpLogging(log_level);

  sluice::Registry registry;
  sluice::registerBuiltins(registry);

  if (*inspect) {
    // 0: every record verifies; 1: damage found; 2: the directory cannot be read.
    return sluice::inspectFileChannel(inspect_dir, std::cout);
  }
  if (*version) {
    std::cout << "sluice " << SLUICE_VERSION << "\n";
    return 0;
  }
  if (*schema) {
    auto f = format == "json"       ? sluice::SchemaFormat::Json
             : format == "markdown" ? sluice::SchemaFormat::Markdown
                                    : sluice::SchemaFormat::Text;
    std::cout << sluice::renderSchema(registry, f);
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
