"""otel-perf's exporters: OTLP selection (``otlp``), OTLP JSON lines files (``files``) and durable OTLP
export (``durable``). The file and durable exporters are also registered as SDK exporter entry points, so
they work under any configurator (``OTEL_TRACES_EXPORTER=otel_perf_file``)."""
