"""msjoe: question answering over long videos with query-driven key-frame selection (MSJoE)."""

__version__ = "0.1.0"
