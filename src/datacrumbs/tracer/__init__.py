"""The tracer: eBPF engine (engine, scope, libbpf, build) and the daemon around it."""
