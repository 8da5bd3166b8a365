"""ringd: the plugin engine LLM gateways call over gRPC.

Subpackages:
    ringd.sdk: what plugin authors import (LLMProxy Plugin SDK compatible).
    ringd.server: the engine host, gRPC servicers, config, store, telemetry, CLI.
    ringd.plugins: the built-in plugins.
    ringd.client: the Python client.
    ringd.testing: helpers for testing plugins and rings (the real engine, no server).
    ringd.v1: generated protobuf stubs of the ringd.v1 wire contract.
"""

__version__ = "0.1.0"
