"""The Paddle Serving front doors (gRPC, REST, bRPC) and what every door enforces (body, connections, TLS,
tokens)."""
