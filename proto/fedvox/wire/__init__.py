"""Helpers both sides of the wire share: safetensors blobs, chunking, checks.

Nothing here imports torch, so the server image stays small; the client
converts torch tensors to numpy arrays at its edge.
"""
