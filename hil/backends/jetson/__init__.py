"""The jetson target: a board's Docker engine over SSH (backend) and the shell scripts the board
runs, kept as package files (scripts/)."""
