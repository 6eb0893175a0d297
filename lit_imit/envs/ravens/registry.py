"""Task table of the Ravens family (filled by the Ravens implementation)."""
