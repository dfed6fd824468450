class DeployzooError(Exception):
    """A user-facing error: its message is one line naming the file and the problem."""
