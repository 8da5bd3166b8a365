"""Built-in plugins, written with the public SDK only (ringd.sdk)."""
