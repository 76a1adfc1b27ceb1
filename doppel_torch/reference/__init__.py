"""Pure-PyTorch reference backend: the specification and the CPU path."""
