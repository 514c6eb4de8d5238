#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <csignal>

int main(int argc, char** argv) {
  // As in the agent (agent/main.cpp): a peer that closed its socket is an error return, not a
  // signal that kills the process. Tests write to sockets the code under test may close.
  std::signal(SIGPIPE, SIG_IGN);
  return doctest::Context(argc, argv).run();
}
