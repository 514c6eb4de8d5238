// The one list of built-in component types. Adding a type means adding its line here.
#include "agent/registry.h"
#include "channels/file/file_channel.h"
#include "channels/memory/memory_channel.h"
#include "interceptors/interceptors.h"
#include "sinks/kafka/kafka_sink.h"
#include "sinks/null/null_sink.h"
#include "sinks/stdout/stdout_sink.h"
#include "sources/exec/exec_source.h"
#include "sources/seq/seq_source.h"
#include "sources/spooldir/spooldir_source.h"
#include "sources/syslog/syslog_source.h"
#include "sources/tail/tail_source.h"

namespace sluice {

void registerBuiltins(Registry& registry) {
  registerExecSource(registry);
  registerSeqSource(registry);
  registerSpooldirSource(registry);
  registerSyslogSource(registry);
  registerTailSource(registry);
  registerMemoryChannel(registry);
  registerFileChannel(registry);
  registerStdoutSink(registry);
  registerNullSink(registry);
  registerKafkaSink(registry);
  registerInterceptors(registry);
}

}  // namespace sluice
