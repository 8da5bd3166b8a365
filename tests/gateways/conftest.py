"""The gateway fixtures (tests/support/gateways.py) for this folder."""

from support.gateways import go_gateway_binary, node_gateway_script, ringd, start_gateway

__all__ = ["go_gateway_binary", "node_gateway_script", "ringd", "start_gateway"]
