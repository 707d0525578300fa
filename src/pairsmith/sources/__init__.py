"""Candidate sources: memories of past embeddings with their keys."""

from pairsmith.sources.queue import Queue

__all__ = ["Queue"]
