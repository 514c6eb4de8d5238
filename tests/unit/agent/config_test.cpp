#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <future>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "agent/config.h"
#include "agent/schema.h"
#include "sinks/kafka/kafka_sink.h"
#include "sources/syslog/syslog_source.h"

using namespace sluice;

namespace {

struct FakeSourceCfg {
  std::string command;
  uint64_t batch_size = 0;
  Millis timeout{};
  bool shell = false;
  bool operator==(const FakeSourceCfg&) const = default;
};
struct FakeChannelCfg {
  uint64_t max_bytes = 0;
  bool operator==(const FakeChannelCfg&) const = default;
};
struct FakeSinkCfg {
  std::string format;
  std::vector<std::string> targets;
  std::string ca_file;
  bool operator==(const FakeSinkCfg&) const = default;
};

const Registry& testRegistry() {
  static Registry r = [] {
    Registry reg;
    OptionTable<FakeSourceCfg> src;
    src.requiredString("command", &FakeSourceCfg::command, "what to run")
        .integer("batch_size", &FakeSourceCfg::batch_size, 100, 1, 1000, "events per batch")
        .duration("batch_timeout", &FakeSourceCfg::timeout, "1s", Millis(1), Millis(60'000), "t")
        .boolean("shell", &FakeSourceCfg::shell, true, "use a shell");
    reg.addSource<FakeSourceCfg>(
        "exec", "runs things", src,
        [](const FakeSourceCfg&, const BuildContext&) -> SourcePtr { return nullptr; });
    OptionTable<FakeChannelCfg> ch;
    ch.size("max_bytes", &FakeChannelCfg::max_bytes, "64MiB", 1024, 1ull << 40, "bytes held");
    reg.addChannel<FakeChannelCfg, Channel>(
        "memory", "in memory", ch,
        std::function<std::shared_ptr<Channel>(const FakeChannelCfg&, const BuildContext&)>(
            [](const FakeChannelCfg&, const BuildContext&) { return std::shared_ptr<Channel>(); }));
    OptionTable<FakeSinkCfg> sk;
    sk.choice("format", &FakeSinkCfg::format, {"text", "json"}, "text", "output format");
    sk.list("targets", &FakeSinkCfg::targets, false, "where to");
    sk.path("ca_file", &FakeSinkCfg::ca_file, "", "a file");
    reg.addSink<FakeSinkCfg>(
        "stdout", "prints", sk,
        [](const FakeSinkCfg&, const BuildContext&) -> SinkPtr { return nullptr; },
        [](const FakeSinkCfg& c) {
          ConfigErrors errors;
          if (c.format == "json" && c.targets.empty()) {
            errors.emplace_back("targets", "json needs at least one target");
          }
          return errors;
        });
    OptionTable<FakeSinkCfg> other;
    other.string("endpoint", &FakeSinkCfg::format, "", "an option only this type has");
    reg.addSink<FakeSinkCfg>(
        "http", "posts", other,
        [](const FakeSinkCfg&, const BuildContext&) -> SinkPtr { return nullptr; });
    return reg;
  }();
  return r;
}

std::map<std::string, std::string> env_vars = {{"HOME_DIR", "/srv"}, {"EMPTY", ""}};

EnvLookup fakeEnv() {
  return [](const std::string& n) -> std::optional<std::string> {
    auto it = env_vars.find(n);
    if (it == env_vars.end()) return std::nullopt;
    return it->second;
  };
}

struct Loaded {
  std::optional<Config> cfg;
  Diagnostics diag{"test.yaml"};
};

Loaded load(const std::string& text) {
  Loaded l;
  l.cfg = loadConfigText(text, "test.yaml", testRegistry(), l.diag, fakeEnv());
  return l;
}

// The one error whose path is `path`; fails the test when there is not exactly one.
Diagnostic errorAt(const Loaded& l, const std::string& path) {
  std::vector<Diagnostic> found;
  for (const auto& d : l.diag.all()) {
    if (d.path == path && d.severity == Diagnostic::Severity::Error) found.push_back(d);
  }
  INFO(l.diag.format());
  REQUIRE(found.size() == 1);
  return found[0];
}

const char* kGood = R"(agent:
  name: pos-1
  status: 127.0.0.1:0
sources:
  cmd:
    type: exec
    command: seq 1 10
    channels: [mem]
channels:
  mem:
    type: memory
    max_bytes: 8MiB
sinks:
  out:
    type: stdout
    channel: mem
    format: json
    targets: [a]
)";

}  // namespace

TEST_CASE("a valid configuration loads with typed values and an implicit group") {
  auto l = load(kGood);
  INFO(l.diag.format());
  REQUIRE(l.cfg);
  CHECK(l.cfg->agent.name == "pos-1");
  CHECK(l.cfg->agent.drain_timeout == Millis(30'000));
  REQUIRE(l.cfg->sources.size() == 1);
  auto& src = std::any_cast<const FakeSourceCfg&>(l.cfg->sources[0].config);
  CHECK(src.command == "seq 1 10");
  CHECK(src.batch_size == 100);
  CHECK(src.timeout == Millis(1000));
  CHECK(src.shell);
  CHECK(std::any_cast<const FakeChannelCfg&>(l.cfg->channels[0].config).max_bytes == 8u << 20);
  REQUIRE(l.cfg->groups.size() == 1);
  CHECK(l.cfg->groups[0].implicit);
  CHECK(l.cfg->groups[0].name == "out");
  CHECK(l.cfg->sinks[0].common.batch_size == 1000);
}

TEST_CASE("syntax errors report line and column") {
  auto l = load("sources:\n  a: [unclosed\n");
  CHECK(!l.cfg);
  REQUIRE(l.diag.all().size() == 1);
  CHECK(l.diag.all()[0].where.line >= 2);
  CHECK(l.diag.format().find("test.yaml:") == 0);
  CHECK(l.diag.format().find("YAML syntax") != std::string::npos);
}

TEST_CASE("unknown keys are reported with path, position and a suggestion") {
  std::string text = kGood;
  text.replace(text.find("    format: json"), 16, "    formt: json");
  auto l = load(text);
  CHECK(!l.cfg);
  auto d = errorAt(l, "sinks.out.formt");
  CHECK(d.where.line == 17);
  CHECK(d.where.column == 5);
  CHECK(d.message == "unknown key 'formt' (did you mean 'format'?)");
}

TEST_CASE("unknown top-level section and unknown type get suggestions") {
  auto l = load("sinkz: {}\nsources:\n  a: {type: exce, channels: [x]}\n");
  CHECK(!l.cfg);
  CHECK(errorAt(l, "sinkz").message == "unknown key 'sinkz' (did you mean 'sinks'?)");
  auto d = errorAt(l, "sources.a.type");
  CHECK(d.where.line == 3);
  CHECK(d.where.column == 13);
  CHECK(d.message.find("unknown source type 'exce' (did you mean 'exec'?)") == 0);
}

TEST_CASE("bad values: sizes, durations, integers, booleans, choices, bounds") {
  auto l = load(R"(sources:
  a:
    type: exec
    command: x
    channels: [mem]
    batch_size: 5000
    batch_timeout: 30
    shell: maybe
channels:
  mem: {type: memory, max_bytes: 12XB}
sinks:
  o: {type: stdout, channel: mem, format: jsn, batch_size: -1}
)");
  CHECK(!l.cfg);
  auto d = errorAt(l, "sources.a.batch_size");
  CHECK(d.where.line == 6);
  CHECK(d.where.column == 17);
  CHECK(d.message == "must be between 1 and 1000, got 5000");
  d = errorAt(l, "sources.a.batch_timeout");
  CHECK(d.where.line == 7);
  CHECK(d.message.find("needs a unit") != std::string::npos);
  CHECK(errorAt(l, "sources.a.shell").message == "expected true or false, got 'maybe'");
  d = errorAt(l, "channels.mem.max_bytes");
  CHECK(d.where.line == 10);
  CHECK(d.where.column == 34);
  CHECK(d.message.find("unknown size unit 'XB'") == 0);
  CHECK(errorAt(l, "sinks.o.format").message ==
        "'jsn' is not one of text, json (did you mean 'json'?)");
  CHECK(errorAt(l, "sinks.o.batch_size").message.find("whole number") != std::string::npos);
}

TEST_CASE("missing required keys and wrong shapes") {
  auto l = load("sources:\n  a: {type: exec}\nchannels:\n  c: [1, 2]\n");
  CHECK(!l.cfg);
  auto text = l.diag.format();
  CHECK(text.find("test.yaml:2:6: error: sources.a: missing required key 'channels'") !=
        std::string::npos);
  CHECK(text.find("test.yaml:2:6: error: sources.a: missing required key 'command'") !=
        std::string::npos);
  CHECK(errorAt(l, "channels.c").message.find("expected a mapping") == 0);
}

TEST_CASE("environment variables expand; unset ones are errors") {
  std::string text = kGood;
  text.replace(text.find("seq 1 10"), 8, "ls ${HOME_DIR} ${MISSING:-/tmp} $${X}");
  auto l = load(text);
  INFO(l.diag.format());
  REQUIRE(l.cfg);
  CHECK(std::any_cast<const FakeSourceCfg&>(l.cfg->sources[0].config).command ==
        "ls /srv /tmp ${X}");
  text = kGood;
  text.replace(text.find("seq 1 10"), 8, "${NOPE}");
  auto bad = load(text);
  CHECK(!bad.cfg);
  auto d = errorAt(bad, "sources.cmd.command");
  CHECK(d.where.line == 7);
  CHECK(d.message.find("environment variable NOPE is not set") == 0);
}

TEST_CASE("wiring: missing channel, channel nobody drains, group problems") {
  auto l = load(R"(sources:
  a: {type: exec, command: x, channels: [mem, memm]}
channels:
  mem: {type: memory}
  idle: {type: memory}
sinks:
  o: {type: stdout, channel: mem}
  p: {type: stdout, channel: idle}
  q: {type: stdout, channel: nope}
sink_groups:
  g: {sinks: [o, p, zz]}
  h: {sinks: [o]}
)");
  CHECK(!l.cfg);
  auto d = errorAt(l, "sources.a.channels");
  CHECK(d.message == "channel 'memm' is not defined in channels (did you mean 'mem'?)");
  CHECK(errorAt(l, "sinks.q.channel").message.find("channel 'nope' is not defined") == 0);
  std::vector<std::string> group_errors;
  for (const auto& x : l.diag.all()) {
    if (x.path == "sink_groups.g.sinks" || x.path == "sink_groups.h.sinks") {
      group_errors.push_back(x.message);
    }
  }
  REQUIRE(group_errors.size() == 3);
  CHECK(group_errors[0].find("all sinks of a group drain one channel") == 0);
  CHECK(group_errors[1].find("sink 'zz' is not defined") == 0);
  CHECK(group_errors[2].find("already in group 'g'") != std::string::npos);

  auto idle = load("channels:\n  c: {type: memory}\n");
  CHECK(!idle.cfg);
  auto e = errorAt(idle, "channels.c");
  CHECK(e.where.line == 2);
  CHECK(e.message.find("no sink drains this channel") == 0);
}

TEST_CASE("all errors are collected, not just the first") {
  auto l = load(R"(agent: {drain_timeout: soon, nme: x}
sources:
  a: {type: exec, command: x, channels: [m], batch_size: 0}
channels:
  m: {type: memory, max_bytes: 1}
sinks:
  s: {type: stdout, channel: m, format: xml}
)");
  CHECK(!l.cfg);
  size_t errors = 0;
  for (const auto& d : l.diag.all()) errors += d.severity == Diagnostic::Severity::Error;
  CHECK(errors == 5);
}

TEST_CASE("duplicate component names are refused") {
  auto l = load(R"(channels:
  m: {type: memory}
  m: {type: memory}
sinks:
  s: {type: stdout, channel: m}
)");
  CHECK(!l.cfg);
  CHECK(errorAt(l, "channels.m").where.line == 3);
}

TEST_CASE("findCycle finds a cycle and nothing in a DAG") {
  CHECK(findCycle({{"a", "b"}, {"b", "c"}}).empty());
  auto c = findCycle({{"a", "b"}, {"b", "c"}, {"c", "a"}, {"x", "a"}});
  REQUIRE(c.size() == 4);
  CHECK(c.front() == c.back());
}

TEST_CASE("size, duration and env parsers") {
  std::string err;
  CHECK(parseSize("64MiB", err) == 64ull << 20);
  CHECK(parseSize("1KB", err) == 1000u);
  CHECK(parseSize("8GiB", err) == 8ull << 30);
  CHECK(parseSize("512", err) == 512u);
  CHECK(!parseSize("", err));
  CHECK(!parseSize("99999999999999999999", err));
  CHECK(!parseSize("20000000TiB", err));
  CHECK(parseDuration("250ms", err) == Millis(250));
  CHECK(parseDuration("30s", err) == Millis(30'000));
  CHECK(parseDuration("5m", err) == Millis(300'000));
  CHECK(parseDuration("1h", err) == Millis(3'600'000));
  CHECK(parseDuration("0", err) == Millis(0));
  CHECK(!parseDuration("30", err));
  CHECK(!parseDuration("3 weeks", err));
  CHECK(formatSize(64ull << 20) == "64MiB");
  CHECK(formatDuration(Millis(1500)) == "1500ms");
  CHECK(!expandEnv("${unterminated", fakeEnv(), err));
  CHECK(!expandEnv("${bad name}", fakeEnv(), err));
  CHECK(expandEnv("${EMPTY:-d}", fakeEnv(), err) == "d");
  CHECK(expandEnv("${EMPTY}", fakeEnv(), err) == "");
}

TEST_CASE("the schema lists every type with its options and the shared keys") {
  auto text = renderSchema(testRegistry(), SchemaFormat::Text);
  CHECK(text.find("sources.<name> (type: exec)") != std::string::npos);
  CHECK(text.find("batch_timeout (duration, 1s, 1ms..1m)") != std::string::npos);
  CHECK(text.find("channels (list, required)") != std::string::npos);
  auto md = renderSchema(testRegistry(), SchemaFormat::Markdown);
  CHECK(md.find("| `format` | text\\|json | text |") != std::string::npos);
  auto json = renderSchema(testRegistry(), SchemaFormat::Json);
  CHECK(json.find("\"key\": \"drain_timeout\"") != std::string::npos);
}

TEST_CASE("edit distance and nearest") {
  CHECK(editDistance("kitten", "sitting") == 3);
  CHECK(nearest("chanels", {"channels", "sinks"}) == "channels");
  CHECK(nearest("zzzzzz", {"channels", "sinks"}).empty());
}

TEST_CASE("a value from the environment is shown expanded, unless its key may be a secret") {
  env_vars["SIZE"] = "8 MiBs";
  std::string text = kGood;
  text.replace(text.find("max_bytes: 8MiB"), 15, "max_bytes: ${SIZE}");
  auto l = load(text);
  CHECK(!l.cfg);
  CHECK(errorAt(l, "channels.mem.max_bytes").message ==
        "${SIZE} (expanded to '8 MiBs') is not a valid size: unknown size unit 'MiBs' in '8 "
        "MiBs' (use B, KiB, MiB, GiB, TiB, KB, MB, GB)");
  env_vars["SECRET_SIZE"] = "hunter2";
  text = kGood;
  for (const char* from : {"[mem]", "  mem:", "channel: mem"}) {
    std::string to = from;
    to.replace(to.find("mem"), 3, "secret");
    text.replace(text.find(from), std::string(from).size(), to);
  }
  text.replace(text.find("max_bytes: 8MiB"), 15, "max_bytes: ${SECRET_SIZE}");
  auto hidden = load(text);
  CHECK(!hidden.cfg);
  CHECK(hidden.diag.format().find("hunter2") == std::string::npos);
  CHECK(errorAt(hidden, "channels.secret.max_bytes").message ==
        "${SECRET_SIZE} (expanded from the environment, value hidden) is not a valid size: "
        "hidden");
}

TEST_CASE("one mistake, one error") {
  SUBCASE("a mistyped type does not also flag the options of the type meant") {
    auto l = load(R"(sources:
  a: {type: exce, command: x, batch_size: 5, shell: false, comand: y, channels: [m]}
)");
    CHECK(!l.cfg);
    INFO(l.diag.format());
    CHECK(l.diag.errorCount() == 2);
    CHECK(errorAt(l, "sources.a.type").message.find("unknown source type 'exce'") == 0);
    CHECK(errorAt(l, "sources.a.comand").message.find("unknown key 'comand'") == 0);
  }
  SUBCASE("a list entry that failed to expand is not also reported empty by the validator") {
    std::string text = kGood;
    text.replace(text.find("targets: [a]"), 12, "targets: ['${NOPE}']");
    auto l = load(text);
    CHECK(!l.cfg);
    INFO(l.diag.format());
    CHECK(l.diag.errorCount() == 1);
    CHECK(errorAt(l, "sinks.out.targets[0]").message.find("NOPE is not set") != std::string::npos);
  }
  SUBCASE("the validator still speaks when the key itself was fine") {
    std::string text = kGood;
    text.replace(text.find("targets: [a]"), 12, "targets: []");
    auto l = load(text);
    CHECK(errorAt(l, "sinks.out.targets").where.line == 18);
  }
}

TEST_CASE("${VAR} inside a flow list: quoted it expands, bare it gets a hint") {
  std::string text = kGood;
  text.replace(text.find("targets: [a]"), 12, "targets: ['${HOME_DIR}', b]");
  auto l = load(text);
  INFO(l.diag.format());
  REQUIRE(l.cfg);
  CHECK(std::any_cast<const FakeSinkCfg&>(l.cfg->sinks[0].config).targets ==
        std::vector<std::string>{"/srv", "b"});
  text.replace(text.find("'${HOME_DIR}'"), 13, "${HOME_DIR}");
  auto bare = load(text);
  CHECK(!bare.cfg);
  CHECK(bare.diag.format().find("quote a ${VAR}: ['${VAR}']") != std::string::npos);
}

TEST_CASE("thousands of bad keys: every one counted, the first hundred shown") {
  std::string text = kGood;
  for (int i = 0; i < 5000; ++i) text += "    k" + std::to_string(i) + ": 1\n";
  text += "    k0: 2\n";
  auto l = load(text);
  CHECK(!l.cfg);
  CHECK(l.diag.errorCount() == 5001);  // 5000 unknown keys, one duplicate (not also unknown)
  CHECK(l.diag.all().size() == Diagnostics::kMaxKept);
  CHECK(l.diag.format().find("test.yaml: 4901 more problems not shown\n") != std::string::npos);
}

namespace {

struct ConfigDir {
  std::filesystem::path path;
  ConfigDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("sluice-config-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~ConfigDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  // Writes sluice.yaml (kGood with these agent lines and sink lines) and loads it from the file.
  Loaded load(const std::string& agent_lines, const std::string& sink_lines = "") const {
    std::string text = kGood;
    text.replace(text.find("  name: pos-1\n"), 0, agent_lines);
    text += sink_lines;
    std::ofstream(path / "sluice.yaml") << text;
    Loaded l;
    l.diag = Diagnostics((path / "sluice.yaml").string());
    l.cfg = loadConfigFile((path / "sluice.yaml").string(), testRegistry(), l.diag, fakeEnv());
    return l;
  }
};

}  // namespace

TEST_CASE("data_dir must be a directory the agent can write or create") {
  ConfigDir dir;
  std::ofstream(dir.path / "plain") << "x";
  SUBCASE("a regular file") {
    auto l = dir.load("  data_dir: " + (dir.path / "plain").string() + "\n");
    CHECK(!l.cfg);
    auto d = errorAt(l, "agent.data_dir");
    CHECK(d.where.line == 2);
    CHECK(d.where.column == 13);
    CHECK(d.message.find("is not a directory") != std::string::npos);
  }
  SUBCASE("below a regular file: cannot be created") {
    auto l = dir.load("  data_dir: " + (dir.path / "plain" / "state").string() + "\n");
    CHECK(!l.cfg);
    CHECK(errorAt(l, "agent.data_dir")
              .message.find("does not exist and cannot be created: '" +
                            (dir.path / "plain").string() + "'") != std::string::npos);
  }
  SUBCASE("missing and not creatable: an error when written, a warning for the default") {
    Diagnostics diag("x.yaml");
    checkDataDir((dir.path / "plain" / "a" / "b").string(), {2, 13}, diag);
    CHECK(diag.hasErrors());
    Diagnostics defaulted("x.yaml");
    checkDataDir((dir.path / "plain" / "a" / "b").string(), {}, defaulted);
    CHECK_FALSE(defaulted.hasErrors());
  }
  SUBCASE("missing but creatable, or existing: accepted") {
    auto l = dir.load("  data_dir: " + (dir.path / "new" / "state").string() + "\n");
    INFO(l.diag.format());
    CHECK(l.cfg);
    CHECK(dir.load("  data_dir: " + dir.path.string() + "\n").cfg);
  }
}

TEST_CASE("relative paths resolve against the configuration file's directory") {
  ConfigDir dir;
  auto l = dir.load("  data_dir: state\n", "    ca_file: certs/ca.pem\n");
  INFO(l.diag.format());
  REQUIRE(l.cfg);
  CHECK(l.cfg->agent.data_dir == (dir.path / "state").string());
  CHECK(std::any_cast<const FakeSinkCfg&>(l.cfg->sinks[0].config).ca_file ==
        (dir.path / "certs/ca.pem").string());
  auto absolute = dir.load("  data_dir: " + (dir.path / "abs").string() + "\n");
  REQUIRE(absolute.cfg);
  CHECK(absolute.cfg->agent.data_dir == (dir.path / "abs").string());
}

TEST_CASE("a directory given as the configuration file is an error, not an empty config") {
  Diagnostics diag("/tmp");
  CHECK(!loadConfigFile("/tmp", testRegistry(), diag, fakeEnv()));
  CHECK(diag.format() == "/tmp: error: cannot read the configuration file: it is a directory\n");
}

TEST_CASE("kafka file checks: stat and faccessat, never open; a FIFO does not block") {
  ConfigDir dir;
  auto fifo = dir.path / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::ofstream(dir.path / "ca.pem") << "x";
  KafkaConfig cfg;
  Diagnostics defaults("k.yaml");
  ConfigReader defaults_reader(defaults, fakeEnv());
  kafkaOptionTable().fill(YAML::Load("{brokers: [a:1], topic: t, tls: true}"), cfg, defaults_reader,
                          "sinks.k");
  auto keys = [](const ConfigErrors& errors) {
    std::string out;
    for (const auto& [k, msg] : errors) out += k + ": " + msg + "\n";
    return out;
  };
  SUBCASE("a FIFO is refused at once") {
    cfg.tls_cert_file = fifo.string();
    auto result = std::async(std::launch::async, [&] { return validateKafkaConfig(cfg); });
    if (result.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
      // Release the blocked open() so the test can finish and report.
      int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
      if (fd >= 0) ::close(fd);
      FAIL("validateKafkaConfig blocked on a FIFO");
    }
    auto text = keys(result.get());
    CHECK(text.find("tls_cert_file: '" + fifo.string() + "' is not a regular file") !=
          std::string::npos);
  }
  SUBCASE("tls_ca_file may be a directory or `probe`; a file is fine everywhere") {
    cfg.tls_ca_file = dir.path.string();
    cfg.tls_cert_file = (dir.path / "ca.pem").string();
    CHECK(keys(validateKafkaConfig(cfg)) == "");
    cfg.tls_ca_file = "probe";
    CHECK(keys(validateKafkaConfig(cfg)) == "");
    cfg.tls_key_file = dir.path.string();
    CHECK(keys(validateKafkaConfig(cfg))
              .find("tls_key_file: '" + dir.path.string() + "' is not a regular file") !=
          std::string::npos);
  }
  SUBCASE("files of an option not in use are not checked") {
    cfg.tls = false;
    cfg.tls_ca_file = (dir.path / "missing.pem").string();
    CHECK(keys(validateKafkaConfig(cfg)) == "tls: TLS files are set but tls is false\n");
  }
  SUBCASE("`probe` is not resolved against the configuration directory") {
    YAML::Node node = YAML::Load("{brokers: [a:1], topic: t, tls: true, tls_ca_file: probe}");
    Diagnostics diag("k.yaml");
    ConfigReader reader(diag, fakeEnv());
    reader.setBaseDir(dir.path.string());
    KafkaConfig parsed;
    kafkaOptionTable().fill(node, parsed, reader, "sinks.k");
    CHECK(parsed.tls_ca_file == "probe");
    CHECK(keys(validateKafkaConfig(parsed)) == "");
  }
}

TEST_CASE("a value from a secret-looking variable is hidden under any key") {
  env_vars["KAFKA_PASSWORD"] = "hunter2";
  std::string text = kGood;
  text.replace(text.find("max_bytes: 8MiB"), 15, "max_bytes: ${KAFKA_PASSWORD}");
  auto l = load(text);
  CHECK(!l.cfg);
  CHECK(l.diag.format().find("hunter2") == std::string::npos);
  CHECK(errorAt(l, "channels.mem.max_bytes").message ==
        "${KAFKA_PASSWORD} (expanded from the environment, value hidden) is not a valid size: "
        "hidden");
  // The one word list: the key path, a variable's name and librdkafka property names.
  for (const char* name : {"DB_PASSWD", "sasl.oauthbearer.config", "ssl.key.location", "API_TOKEN",
                           "AUTH_HEADER", "PRIVATE_PEM", "sasl.jaas.config"}) {
    CHECK_MESSAGE(looksSecret(name), name);
  }
  CHECK_FALSE(looksSecret("channels.mem.max_bytes"));
  CHECK(ConfigReader::referencesSecret("x-${KAFKA_PASSWORD:-y}"));
  CHECK_FALSE(ConfigReader::referencesSecret("$${KAFKA_PASSWORD} ${SIZE}"));
}

TEST_CASE("past the cap, unknown keys are counted without a did-you-mean search") {
  std::string text = kGood;
  for (int i = 0; i < 5000; ++i) text += "    k" + std::to_string(i) + ": 1\n";
  size_t before = editDistanceCount();
  auto l = load(text);
  CHECK(l.diag.errorCount() == 5000);
  // The sink type has a handful of keys: a search for each of the 5000 keys would be tens of
  // thousands of distances; only the first hundred (those shown) are searched.
  CHECK(editDistanceCount() - before < 100 * 10);
  // A candidate whose length differs by more than the allowed edits is not compared.
  before = editDistanceCount();
  CHECK(nearest("ab", {"abc", "a_much_longer_key", "another_long_one"}) == "abc");
  CHECK(editDistanceCount() - before == 1);
}

TEST_CASE("an empty data_dir is an error at its key") {
  auto l = load(std::string("agent:\n  data_dir: \"\"\n") + (kGood + 7));
  CHECK(!l.cfg);
  auto d = errorAt(l, "agent.data_dir");
  CHECK(d.message == "must not be empty");
  CHECK(d.where.line == 2);
}

TEST_CASE("a leading ~ in a path option is an error, not <confdir>/~") {
  ConfigDir dir;
  auto l = dir.load("  data_dir: ~/state\n", "    ca_file: ~sluice/ca.pem\n");
  CHECK(!l.cfg);
  CHECK(errorAt(l, "agent.data_dir").message == "~ is not expanded; write the full path");
  CHECK(errorAt(l, "sinks.out.ca_file").message == "~ is not expanded; write the full path");
}

TEST_CASE("syslog cert_file, key_file and ca_file are paths") {
  ConfigDir dir;
  YAML::Node node = YAML::Load(
      "{listeners: ['tls://127.0.0.1:0'], cert_file: c.pem, key_file: k.pem, ca_file: ca.pem}");
  Diagnostics diag("s.yaml");
  ConfigReader reader(diag, fakeEnv());
  reader.setBaseDir(dir.path.string());
  SyslogConfig parsed;
  syslogOptionTable().fill(node, parsed, reader, "sources.s");
  CHECK(parsed.cert_file == (dir.path / "c.pem").string());
  CHECK(parsed.key_file == (dir.path / "k.pem").string());
  CHECK(parsed.ca_file == (dir.path / "ca.pem").string());
}
