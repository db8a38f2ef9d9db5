"""Selection algorithms as plain array-in/array-out functions (no training loop, no data modules)."""
