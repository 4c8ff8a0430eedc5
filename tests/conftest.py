"""Suite-wide settings."""

import os

# gRPC's core logs each refused TLS handshake to stderr; the tests provoke many on purpose.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
