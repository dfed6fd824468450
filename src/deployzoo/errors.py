class DeployzooError(Exception):
    """A user-facing error: its message is one line naming the file and the problem. The CLI prints it as
    `deployzoo: error: MESSAGE` and exits with `exit_code`."""

    exit_code = 2


class Interrupted(DeployzooError):
    """Ctrl-C (SIGINT) during a command: the message says what was kept and how to go on; exit status 130 (the
    shell's 128 + SIGINT)."""

    exit_code = 130
