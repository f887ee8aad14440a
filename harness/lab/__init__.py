"""The real domain: benches (emulated, or a lab's), capture plans and the capture-set format."""
