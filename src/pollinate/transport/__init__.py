"""gRPC transport between hub, nodes and users: the only package that imports ``grpc``."""

CHUNK_BYTES = 1 << 20
"""Arrays travel in wire chunks of at most this many bytes, in both directions."""

NODE_ID_HEADER = "pollinate-node-id"
"""Metadata key that carries a node's id in insecure mode (mTLS takes it from the certificate)."""
