"""Data: the QA schema (:mod:`msjoe.data.schema`) and benchmark loaders (:mod:`msjoe.data.benchmarks`)."""

from msjoe.data.schema import FIELDS, QAFormatError, QAItem, read_qa_jsonl, write_qa_jsonl

__all__ = ["FIELDS", "QAFormatError", "QAItem", "read_qa_jsonl", "write_qa_jsonl"]
