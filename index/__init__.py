"""What a channel serves, computed from packages or records."""
