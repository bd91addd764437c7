"""A1111/Forge adapters: thin, no maths. Filled in by the A1111 issue."""
