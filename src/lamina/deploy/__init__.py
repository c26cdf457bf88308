"""lamina.deploy: deployments (ZLayer v1 specs and Compose files) kept converged by the daemon."""
