"""The SSH transport to boards, on Fabric: the connection (strict host keys), rsync over it,
the board lease and telemetry sampling.  Only the jetson backend uses it."""
