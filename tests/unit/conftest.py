"""Unit tier: pure functions only. Nothing real runs here: no servers, no network, no training."""
