"""Small shared helpers (atomic I/O, logging, seeding)."""
