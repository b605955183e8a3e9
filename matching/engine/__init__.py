"""The matching engine: pure Python (dataclasses, numpy), no Django imports."""
