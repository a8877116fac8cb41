"""Limits of the method that several layers share (prompts, parsing, samplers, trainers), defined once here."""

MAX_QUERIES = 4
"""Paper: the MLLM writes at most 4 visual queries, so the similarity matrix S has 1 to 4 rows."""
