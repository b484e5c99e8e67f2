"""Dataset intake: reading images, recognising dataset layouts, checking integrity."""
