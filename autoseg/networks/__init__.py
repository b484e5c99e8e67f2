"""networks stage."""
