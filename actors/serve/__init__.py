"""The policy behind Ray Serve: a `/v1` streaming-session API, its engines and its page."""
