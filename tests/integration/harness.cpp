#include "harness.h"

#include <curl/curl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace sluice::test {

std::string sluiceBinary() { return SLUICE_BINARY; }

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "sluice-it-XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeFile(const std::string& path, const std::string& content) {
  // Written aside and renamed, as an operator's editor or config management would.
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
  }
  std::filesystem::rename(tmp, path);
}

std::vector<std::string> splitLines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

Process::Process(const std::vector<std::string>& argv, const std::string& dir,
                 const std::map<std::string, std::string>& extra_env, size_t stdout_bytes_per_ms) {
  static int counter = 0;
  ++counter;
  out_path_ = dir + "/proc" + std::to_string(counter) + ".out";
  err_path_ = dir + "/proc" + std::to_string(counter) + ".err";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  int pipe_fds[2] = {-1, -1};
  if (stdout_bytes_per_ms > 0) {
    if (pipe(pipe_fds) != 0) throw std::runtime_error("pipe failed");
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
    posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
    posix_spawn_file_actions_addclose(&actions, pipe_fds[1]);
  } else {
    posix_spawn_file_actions_addopen(&actions, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
  }
  posix_spawn_file_actions_addopen(&actions, 2, err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    auto key = kv.substr(0, kv.find('='));
    if (!extra_env.count(key)) env_strings.push_back(kv);
  }
  for (const auto& [k, v] : extra_env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (auto& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);
  int rc = posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(rc));
  if (stdout_bytes_per_ms > 0) {
    close(pipe_fds[1]);
    int fd = pipe_fds[0];
    std::string path = out_path_;
    { std::ofstream create(path, std::ios::trunc); }
    reader_ = std::thread([fd, path, stdout_bytes_per_ms] {
      std::vector<char> buf(stdout_bytes_per_ms);
      std::ofstream out(path, std::ios::binary | std::ios::app);
      while (true) {
        ssize_t n = read(fd, buf.data(), buf.size());
        if (n <= 0) break;
        out.write(buf.data(), n);
        out.flush();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      close(fd);
    });
  }
}

Process::~Process() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    wait(std::chrono::seconds(10));
  }
  if (reader_.joinable()) reader_.join();
}

void Process::signal(int sig) { ::kill(pid_, sig); }

bool Process::running() {
  if (status_) return false;
  int st = 0;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
  waitFor([&] { return !running(); }, timeout);
  // What the process wrote to a throttled stdout pipe before it died is still being read:
  // out() must see all of it.
  if (status_ && reader_.joinable()) reader_.join();
  return status_;
}

bool waitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

namespace {
size_t collect(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}
}  // namespace

HttpResponse httpGet(const std::string& url) {
  HttpResponse r;
  CURL* curl = curl_easy_init();
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
  if (curl_easy_perform(curl) == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
    char* ct = nullptr;
    curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ct);
    if (ct) r.content_type = ct;
  }
  curl_easy_cleanup(curl);
  return r;
}

int loggedStatusPort(const Process& p) {
  static const std::regex re("status server listening on .* \\(port ([0-9]+)\\)");
  std::smatch m;
  std::string err = p.err();
  if (std::regex_search(err, m, re)) return std::stoi(m[1]);
  return 0;
}

RunResult runSluice(const std::vector<std::string>& args, const TempDir& dir) {
  std::vector<std::string> argv{sluiceBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  Process p(argv, dir.path());
  auto code = p.wait(std::chrono::seconds(60));
  return {code.value_or(-1), p.out(), p.err()};
}

long long channelLowWater(const std::string& channel_dir, const TempDir& dir) {
  auto inspect = runSluice({"channel", "inspect", channel_dir}, dir);
  std::smatch m;
  if (!std::regex_search(inspect.out, m, std::regex("low water ([0-9]+)"))) return -1;
  return std::stoll(m[1]);
}

}  // namespace sluice::test
