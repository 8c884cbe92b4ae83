"""A shared lab on labgrid's coordinator: places reserved by tags become a session's members."""
