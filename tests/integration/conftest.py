"""Integration tier: real components that run on this machine. A real SeaweedFS S3 server
(tests/conftest.py), the real helm and promtool binaries (`make tools`), and real Axolotl
training on CPU with a tiny model built offline. No mocks; no network beyond loopback.
"""
