"""Errors the user can act on. Anything else is a bug and is reported as internal."""


class UserError(Exception):
    """A problem with the user's input or machine, with a message saying what to do.

    The CLI prints the message (no traceback) and exits non-zero; protocol mode sends it as an
    `error` event of kind "user".
    """
