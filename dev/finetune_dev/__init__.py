"""Dev, demo and local tooling: the local runner, the demo, a dev S3 server, the tiny and
SmolLM2 models. No image installs this package; it may import the operator and the contract,
never the other way round."""
