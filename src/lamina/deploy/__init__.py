"""lamina.deploy: deployments (a placeholder; the public API is ctrl's)."""
