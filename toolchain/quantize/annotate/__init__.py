"""Quantize step 2, annotate: where the Q/DQ pairs go (the QuantPlan) and the per-op rules."""
