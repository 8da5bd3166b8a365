"""ringd.server: the engine host, gRPC servicers, config, store, telemetry and CLI."""
