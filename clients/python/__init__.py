"""ringd.client: async and sync Python clients of the ringd.v1 services."""
