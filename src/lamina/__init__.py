"""lamina: a container platform for Linux hosts."""

__version__ = "0.1.0"
