"""Backend-specific tests (what the contract suite cannot say through the public API alone)."""
